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
