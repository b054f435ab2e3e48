"""`camkit overlay` end to end over generated folders, broken files included."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camkit.cli import main

from ..helpers import ROOT, cam_methods, user_code_on_path



@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Every supported format and kind, in a tree with spaces and non-ASCII names, plus broken files."""
    folder = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    (folder / "sub dir").mkdir()
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "sub dir" / "été photo.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 44), dtype=np.uint8)).save(folder / "gray.bmp")
    Image.fromarray(rng.integers(0, 65535, (20, 25), dtype=np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (20, 25, 4), dtype=np.uint8)).save(folder / "alpha.webp")
    Image.fromarray(rng.integers(0, 255, (21, 22, 3), dtype=np.uint8)).save(folder / "scan.tiff")
    Image.fromarray(rng.integers(0, 255, (21, 22, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    rotated = Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90": the upright image is 60 high and 30 wide
    rotated.save(folder / "exif.jpg", exif=exif)
    (folder / "truncated.jpg").write_bytes((folder / "sub dir" / "été photo.jpg").read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    return folder


GOOD = {  # output name -> upright (height, width)
    "colour": (50, 70), "sub dir/été photo": (40, 30), "gray": (33, 44), "deep16": (20, 25),
    "alpha": (20, 25), "scan": (21, 22), "rgba": (21, 22), "exif": (60, 30),
}
BROKEN = {"truncated.jpg", "empty.png", "notes.png"}


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "resnet18_3class.pt"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict()}, path)
    return path


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_good_image_written_at_its_size_and_broken_ones_reported(images, resnet_weights, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    status = main(["overlay", str(images), "-o", str(out), "--model", "resnet18", "--weights", str(resnet_weights),
                   "--method", "gradcam,eigencam", "--input-size", "32", "--save-maps", "npy", "--workers", "0",
                   "--no-caption"])
    assert status == 1  # something failed
    for name, size in GOOD.items():
        for method in ("gradcam", "eigencam"):
            written = Image.open(out / f"{name}_{method}.png")
            assert written.size == (size[1], size[0]) and written.mode == "RGB"
            saved_map = np.load(out / f"{name}_{method}_map.npy")
            assert saved_map.shape == size and 0 <= saved_map.min() and saved_map.max() <= 1
            # A channel-weighted method saves its (K,) channel weights beside the map; Eigen-CAM has none.
            sidecar = out / f"{name}_{method}_channel_weights.npy"
            assert np.load(sidecar).ndim == 1 if method == "gradcam" else not sidecar.exists()
    err = capsys.readouterr().err
    rows = _manifest(out)
    assert len(rows) == 2 * (len(GOOD) + len(BROKEN))
    for row in rows:
        broken = Path(row["input"]).name in BROKEN
        assert row["status"] == ("error" if broken else "ok")
        if broken:
            assert row["error"].startswith("cannot read image") and Path(row["input"]).name in err
        else:
            assert row["predicted_class"] in {"0", "1", "2"} and float(row["score"]) > 0
            assert row["explained_class"] == row["predicted_class"]
    assert not list(out.rglob("*.part"))


def test_resume_skips_finished_images_and_overwrite_redoes_them(images, resnet_weights, tmp_path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for name in ("colour.png", "gray.bmp", "scan.tiff"):
        (good / name).write_bytes((images / name).read_bytes())
    out = tmp_path / "out"
    args = ["overlay", str(good), "-o", str(out), "--model", "resnet18", "--weights", str(resnet_weights),
            "--input-size", "32", "--workers", "0", "--target", "2"]
    assert main(args) == 0
    first = {path.name: path.stat().st_mtime_ns for path in out.glob("*.png")}
    rows_before = {row["input"]: row for row in _manifest(out)}
    (out / "gray_gradcam.png").unlink()  # as if the run had been interrupted
    assert main(args) == 0
    # the manifest is upserted: the skipped images keep their first run's row, predictions and scores included
    rows_after = {row["input"]: row for row in _manifest(out)}
    assert rows_after.keys() == rows_before.keys()
    assert all(rows_after[key] == row for key, row in rows_before.items() if not key.endswith("gray.bmp"))
    assert (out / "gray_gradcam.png").exists()
    assert (out / "colour_gradcam.png").stat().st_mtime_ns == first["colour_gradcam.png"]
    assert (out / "gray_gradcam.png").stat().st_mtime_ns != first["gray_gradcam.png"]
    assert all(row["explained_class"] == "2" and row["score"] for row in _manifest(out))
    assert main(args + ["--overwrite"]) == 0
    assert {row["status"] for row in _manifest(out)} == {"ok"}


def test_model_from_factory_and_from_an_exported_program(images, tmp_path) -> None:
    with user_code_on_path():
        out = tmp_path / "factory"
        assert main(["overlay", str(images / "colour.png"), "-o", str(out), "--model", "factory_model:tiny",
                     "--method", "gradcam++", "--workers", "0"]) == 0
        assert Image.open(out / "colour_gradcampp.png").size[0] == 70  # and below it the caption strip
    model = torchvision.models.resnet18(num_classes=4).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, tmp_path / "model.pt2")
    out = tmp_path / "exported"
    assert main(["overlay", str(images / "gray.bmp"), "-o", str(out), "--model", str(tmp_path / "model.pt2"),
                 "--layer", "layer4", "--input-size", "32", "--workers", "0"]) == 0
    assert Image.open(out / "gray_gradcam.png").size[0] == 44


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet18", "--weights", "WEIGHTS_GARBAGE"], "cannot read weights file"),
        (["--model", "resnet81"], "unknown model 'resnet81'; did you mean resnet18"),
        (["--model", "resnet18", "--weights", "RESNET", "--layer", "layer5"], "no layer named 'layer5'"),
        (["--model", "TORCHSCRIPT"], "TorchScript"),
        (["--method", "gradcam,nope"], "unknown method nope"),
        (["-o", "OUTPUT_IS_A_FILE"], "cannot write to output folder"),
    ],
)
def test_bad_requests_are_one_line_errors(images, resnet_weights, tmp_path, extra, message) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    script = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 1)), script)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    substitutions = {"WEIGHTS_GARBAGE": str(garbage), "RESNET": str(resnet_weights), "TORCHSCRIPT": str(script),
                     "OUTPUT_IS_A_FILE": str(blocker / "out")}
    args = [substitutions.get(arg, arg) for arg in extra]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    process = subprocess.run([sys.executable, "-m", "camkit", "overlay", str(images / "colour.png"), *args,
                              "--workers", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 2  # bad usage (DESIGN.md); 1 is for runs where some inputs failed
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in process.stderr, process.stderr


@pytest.mark.slow
def test_bundled_demo_on_the_shipped_samples(tmp_path) -> None:
    process = subprocess.run([sys.executable, "-m", "camkit", "overlay", str(ROOT / "assets" / "samples"),
                              "-o", str(tmp_path / "out"), "--method", "all", "--samples", "2"],  # README's command
                             capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    rows = _manifest(tmp_path / "out")
    samples = sorted((ROOT / "assets" / "samples").glob("*.png"))
    assert len(rows) == len(cam_methods()) * len(samples)  # the demo is a CNN: no attention methods
    assert {row["status"] for row in rows} == {"ok"}
    # each sample is named after its digit; the demo model reads them
    correct = [row["predicted_name"] == Path(row["input"]).stem.split("digit")[1] for row in rows if row["method"] == "gradcam"]
    assert sum(correct) >= len(correct) - 1


def test_help_and_version() -> None:
    for args in (["--help"], ["overlay", "--help"], ["--version"]):
        process = subprocess.run([sys.executable, "-m", "camkit", *args], capture_output=True, text=True)
        assert process.returncode == 0 and process.stdout
    assert "camkit 0." in subprocess.run([sys.executable, "-m", "camkit", "--version"], capture_output=True, text=True).stdout
