"""Explanation: data only, a one-line repr, drawn by camkit.viz."""
from __future__ import annotations

import subprocess
import sys

import torch
import torchvision

import camkit


def test_repr_is_one_line_without_tensors() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    result = camkit.GradCAM(model, "layer4").explain(torch.randn(3, 3, 64, 64), [0, 1, 2])
    text = repr(result)
    assert "\n" not in text and "tensor(" not in text and len(text) < 200
    assert text == ("Explanation(method='gradcam', layer='layer4', images=3, maps=64x64, layer_maps=2x2, "
                    "targets=[0, 1, 2], device=cpu)")
    callable_target = camkit.GradCAM(model, "layer4").explain(torch.randn(1, 3, 64, 64), lambda out: out[:, 0])
    assert "targets=callable" in repr(callable_target)


def test_importing_camkit_imports_no_matplotlib_and_no_application() -> None:
    code = ("import sys, camkit; bad = [m for m in sys.modules if m.startswith(('matplotlib', 'camkit.app', "
            "'camkit.cli', 'argparse'))]; print(bad)")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    # argparse may be pulled in by torch itself; camkit's own application modules must not be
    assert [name for name in eval(process.stdout) if name.startswith("camkit") or name.startswith("matplotlib")] == []


def test_the_result_draws_itself_through_viz() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    result = camkit.GradCAM(model, "layer4").explain(torch.randn(1, 3, 32, 32))
    png = result._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_to_a_folder_writes_maps_overlays_and_a_record(tmp_path) -> None:
    import json

    import numpy as np
    from PIL import Image

    model = torchvision.models.resnet18(num_classes=4).eval()
    result = camkit.GradCAM(model, "layer4").explain(torch.randn(2, 3, 64, 48), [1, 3])
    folder = result.save(tmp_path / "saved")
    record = json.loads((folder / "explanation.json").read_text())
    assert record["method"] == "gradcam" and record["layer"] == "layer4" and record["targets"] == [1, 3]
    assert record["torch"] == torch.__version__ and len(record["predictions"]) == 2
    for index, files in enumerate(record["images"]):
        np.testing.assert_array_equal(np.load(folder / files["map"]), result.maps[index].numpy())
        assert Image.open(folder / files["overlay"]).size == (48, 64)
    figure = result.save(tmp_path / "figure.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_show_in_a_plain_script_opens_a_window_or_says_why_not(tmp_path) -> None:
    code = ("import warnings, torch, camkit; m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), "
            "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)); "
            "r = camkit.GradCAM(m, '1').explain(torch.randn(1, 3, 16, 16))\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always'); r.show()\n"
            "print([str(w.message) for w in caught])")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", **_python_env()})
    assert process.returncode == 0, process.stderr
    assert "cannot open a window" in process.stdout and "IPython.core.display" not in process.stdout


def _python_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key in ("PYTHONPATH", "HOME", "VIRTUAL_ENV")}
