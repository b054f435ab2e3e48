"""A crafted torch.export archive must never run code: every way torch would unpickle is refused first."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from camkit.app.models import load_model
from camkit.app.safe_load import UnsafeArchive, exported_program_bytes


class _RunsCode:
    """Unpickling this calls os.system: what a hostile weight file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _exported(path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    torch.export.save(torch.export.export(model.eval(), (torch.randn(1, 3, 16, 16),)), path)
    return path


def _rewritten(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """``source`` with some entries (named without the archive's top folder) replaced, added or removed."""
    with zipfile.ZipFile(source) as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        entries = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    for name, payload in change.items():
        if payload is None:
            entries.pop(name, None)
        else:
            entries[name] = payload
    with zipfile.ZipFile(target, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(f"{top}/{name}", payload)
    return target


def _weights_config(source: Path) -> dict:
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        return json.loads(archive.read(name))


def _hostile_weight(tmp_path: Path, marker: Path) -> Path:
    clean = _exported(tmp_path / "clean.pt2")
    config = _weights_config(clean)
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return _rewritten(clean, tmp_path / "hostile.pt2", {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{first['path_name']}": pickle.dumps(_RunsCode(marker)),
    })


def test_the_crafted_archive_really_runs_code_in_torch(tmp_path) -> None:
    # The threat is real: torch's own loader runs the pickle (in a child process, to keep this one clean).
    marker = tmp_path / "ran"
    hostile = _hostile_weight(tmp_path, marker)
    subprocess.run([sys.executable, "-c", f"import torch\ntry: torch.export.load({str(hostile)!r})\nexcept Exception: pass"],
                   capture_output=True, timeout=120, cwd=Path(__file__).parent)
    assert marker.exists()


def test_a_use_pickle_weight_is_refused_before_anything_is_unpickled(tmp_path) -> None:
    marker = tmp_path / "ran"
    hostile = _hostile_weight(tmp_path, marker)
    with pytest.raises(UnsafeArchive, match="full unpickling"):
        load_model(str(hostile))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["layers", "overlay"])
def test_the_cli_refuses_it_in_one_line(tmp_path, command) -> None:
    marker = tmp_path / "ran"
    hostile = _hostile_weight(tmp_path, marker)
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    args = [str(hostile)] if command == "layers" else [str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                                                        "--model", str(hostile), "--workers", "0", "--quiet"]
    process = subprocess.run([sys.executable, "-m", "camkit", command, *args], capture_output=True, text=True,
                             timeout=300)
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1 and "refusing" in lines[0] and "Traceback" not in process.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_pickled_objects_and_legacy_payloads_are_refused(tmp_path) -> None:
    marker = tmp_path / "ran"
    clean = _exported(tmp_path / "clean.pt2")
    hostile_pickle = pickle.dumps(_RunsCode(marker))
    constants = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}}}
    cases = {
        "opaque object": {"data/constants/model_constants_config.json": json.dumps(constants).encode(),
                          "data/constants/opaque_obj_0": hostile_pickle},
        "sample inputs": {"data/sample_inputs/model.pt": hostile_pickle},
        "legacy weights": {"data/weights/model.pt": hostile_pickle},
    }
    for label, change in cases.items():
        with pytest.raises(UnsafeArchive, match="refusing"):
            exported_program_bytes(_rewritten(clean, tmp_path / f"{label}.pt2", change))
    legacy = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(legacy, "w") as archive:
        archive.writestr("version", "1.0")
        archive.writestr("serialized_exported_program.json", "{}")
        archive.writestr("serialized_state_dict.pt", hostile_pickle)
    with pytest.raises(UnsafeArchive, match="pre-2.8 layout"):
        load_model(str(legacy))
    assert not marker.exists()


def test_a_clean_archive_and_tensor_pickles_still_load(tmp_path) -> None:
    clean = _exported(tmp_path / "clean.pt2")
    assert load_model(str(clean)).model(torch.randn(1, 3, 16, 16)).shape == (1, 2)
    # A weight torch pickled because it is a tensor is fine: it loads under weights_only=True.
    config = _weights_config(clean)
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    with zipfile.ZipFile(clean) as archive:
        name = next(n for n in archive.namelist() if n.endswith(f"weights/{first['path_name']}"))
        meta = first["tensor_meta"]
        sizes = [s["as_int"] for s in meta["sizes"]]
        tensor = torch.frombuffer(bytearray(archive.read(name)), dtype=torch.float32).reshape(sizes).clone()
    import io

    buffer = io.BytesIO()
    torch.save(nn.Parameter(tensor), buffer)  # as torch.export.save pickles a parameter
    pickled = _rewritten(clean, tmp_path / "pickled.pt2", {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{first['path_name']}": buffer.getvalue(),
    })
    loaded = load_model(str(pickled)).model
    assert torch.equal(dict(loaded.named_parameters())["0.weight"], tensor)


def test_a_tampered_torchvision_cache_is_refused(tmp_path, monkeypatch) -> None:
    # torchvision loads its cached weight sets with full pickle; camkit makes that load weights-only.
    import torchvision

    marker = tmp_path / "ran"
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / weights.url.rsplit("/", 1)[1]).write_bytes(pickle.dumps(_RunsCode(marker)))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with pytest.raises(UnsafeArchive, match="cached weights"):
        load_model("resnet18", "DEFAULT")
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the switch is put back
