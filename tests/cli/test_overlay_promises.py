"""DESIGN.md's command-line promises: unique outputs, an accumulating manifest, checks before work,
one bad input never aborts, clean interrupts and resumes. Small images and the bundled demo model."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.app.demo import DemoNet
from camkit.cli import main

from ..helpers import TESTS

FAST = ["--workers", "0", "--quiet"]


def _picture(path: Path, seed: int, size: tuple[int, int] = (30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "camkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=300)


def _one_line_error(process: subprocess.CompletedProcess, needle: str) -> None:
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in process.stderr, process.stderr


# 1. unique outputs ------------------------------------------------------------------------------

def test_two_inputs_never_share_an_output(tmp_path) -> None:
    _picture(tmp_path / "x" / "a.png", 1)
    _picture(tmp_path / "y" / "a.png", 2)
    _picture(tmp_path / "z" / "a.png", 3)
    Image.open(tmp_path / "z" / "a.png").convert("RGB").save(tmp_path / "z" / "a.jpg")
    out = tmp_path / "out"
    assert main(["overlay", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(out), *FAST]) == 0
    rows = _rows(out)
    assert sorted(Path(row["output"]).as_posix() for row in rows) == ["x/a_gradcam.png",  # relative to out
                                                                                        "y/a_gradcam.png"]
    assert main(["overlay", str(tmp_path / "z"), "-o", str(tmp_path / "out2"), *FAST]) == 0
    outputs = {Path(row["input"]).name: Path(row["output"]).name for row in _rows(tmp_path / "out2")}
    assert outputs == {"a.png": "a_png_gradcam.png", "a.jpg": "a_jpg_gradcam.png"}
    assert all((folder / row["output"]).exists() for folder in (out, tmp_path / "out2") for row in _rows(folder))


def test_a_very_long_name_is_shortened_and_stays_unique(tmp_path) -> None:
    stem = "s" * 235
    _picture(tmp_path / "in" / f"{stem}.png", 1)
    _picture(tmp_path / "in" / f"{stem}x.png", 2)
    out = tmp_path / "out"
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), "--method", "smoothgradcam++",
                 "--save-maps", "npy", *FAST]) == 0
    outputs = [out / row["output"] for row in _rows(out)]
    assert len(set(outputs)) == 2 and all(path.exists() and len(path.name.encode()) <= 255 for path in outputs)
    assert not list(out.glob("*.part"))


# 2. the manifest accumulates ------------------------------------------------------------------------

def test_the_manifest_keeps_earlier_rows_and_other_methods(tmp_path) -> None:
    for index in range(3):
        _picture(tmp_path / "in" / f"img{index}.png", index)
    out = tmp_path / "out"
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), "--method", "gradcam", *FAST]) == 0
    first = {(row["input"], row["method"]): row for row in _rows(out)}
    assert all(row["predicted_class"] and row["score"] for row in first.values())
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), "--method", "gradcam", *FAST]) == 0
    assert {(row["input"], row["method"]): row for row in _rows(out)} == first  # a rerun blanks nothing
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), "--method", "eigencam", *FAST]) == 0
    rows = _rows(out)
    assert sorted({row["method"] for row in rows}) == ["eigencam", "gradcam"] and len(rows) == 6
    assert all(row == first[(row["input"], row["method"])] for row in rows if row["method"] == "gradcam")


def test_a_manifest_that_is_not_camkits_is_never_overwritten(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("patient,diagnosis\n17,benign\n")
    process = _cli("overlay", str(tmp_path / "in"), "-o", str(out), *FAST)
    _one_line_error(process, "not a camkit manifest")
    assert (out / "manifest.csv").read_text() == "patient,diagnosis\n17,benign\n"
    assert not list(out.glob("*.png"))


def test_file_names_that_are_not_utf8_do_not_stop_the_manifest(tmp_path) -> None:
    folder = tmp_path / "in"
    _picture(folder / "plain.png", 1)
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    _picture(folder / odd, 2)
    out = tmp_path / "out"
    for _ in range(2):  # the rerun reads the manifest back
        assert main(["overlay", str(folder), "-o", str(out), *FAST]) == 0
        assert sorted(Path(row["input"]).name for row in _rows(out)) == sorted([odd, "plain.png"])
    assert (out / os.fsdecode(b"caf\xe9_gradcam.png")).exists()


# 3. the output folder is never read as input ----------------------------------------------------------

def test_an_output_folder_inside_the_input_is_not_read_back(tmp_path) -> None:
    folder = tmp_path / "in"
    for index in range(2):
        _picture(folder / f"img{index}.png", index)
    out = folder / "cams"
    for _ in range(3):
        assert main(["overlay", str(folder), "-o", str(out), *FAST]) == 0
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png")) == ["img0_gradcam.png",
                                                                                        "img1_gradcam.png"]
    assert len(_rows(out)) == 2
    assert main(["overlay", f"{folder}/**/*.png", "-o", str(out), *FAST]) == 0  # a glob skips it too
    assert len(_rows(out)) == 2


def test_the_input_folder_as_output_is_refused(tmp_path) -> None:
    folder = tmp_path / "in"
    _picture(folder / "a.png", 1)
    _picture(folder / "a_gradcam.png", 2)  # an input that an output name would overwrite
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    for out in (folder, tmp_path):
        process = _cli("overlay", str(folder), "-o", str(out), "--overwrite", *FAST)
        _one_line_error(process, "is the input folder")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


# 4. checks before work ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--colormap", "nosuchmap"], "Unknown colormap 'nosuchmap'"),
        (["--input-size", "-3"], "--input-size must be at least"),
        (["--input-size", "1"], "--input-size must be at least"),
        (["--input-size", "0"], "--input-size must be at least"),
        (["--device", "meta"], "cpu, cuda or mps"),
        (["--layer", "features.99"], "no layer named 'features.99'"),
        (["--normalize", "0.5,0.5,0.5:inf,1,1"], "finite and positive"),
        (["--normalize", "0.5,0.5,0.5:nan,1,1"], "finite and positive"),
        (["--model", "factory_model:grayscale"], "cannot run on a 3-channel"),
        (["--alpha", "2"], "--alpha"),
    ],
)
def test_bad_requests_fail_in_one_line_before_anything_is_written(tmp_path, extra, needle) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    out = tmp_path / "out"
    _one_line_error(_cli("overlay", str(tmp_path / "in"), "-o", str(out), *extra, *FAST), needle)
    assert not out.exists()


def test_weights_of_another_shape_are_one_line(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    five_classes = tmp_path / "demo5.pt"
    torch.save(DemoNet(num_classes=5).state_dict(), five_classes)
    out = tmp_path / "out"
    _one_line_error(_cli("overlay", str(tmp_path / "in"), "-o", str(out), "--weights", str(five_classes), *FAST),
                    "do not fit the demo CNN")
    assert not out.exists()


def test_nothing_found_leaves_no_folder(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    _one_line_error(_cli("overlay", str(tmp_path / "in"), "-o", str(out), *FAST), "no images found")
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (["layers", "resnet18", "--input-size", "0"], "--input-size must be"),
        (["evaluate", "--n-images", "0"], "--n-images must be at least 1"),
        (["evaluate", "--n-images", "-4"], "--n-images must be at least 1"),
        (["evaluate", "--batch-size", "-1"], "--batch-size must be at least 1"),
        (["evaluate", "--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_other_commands_check_their_numbers(command, needle) -> None:
    _one_line_error(_cli(*command), needle)


def test_layers_lists_the_bundled_model() -> None:
    process = _cli("layers", "demo")
    assert process.returncode == 0, process.stderr
    assert "features" in process.stdout and "<- automatic choice" in process.stdout


def test_a_file_that_is_not_a_model_prints_no_torch_traceback(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    (tmp_path / "notckpt.pt").write_bytes(b"not a model at all")
    _one_line_error(_cli("overlay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                         str(tmp_path / "notckpt.pt"), *FAST), "cannot load")


def test_a_one_by_one_layer_warns(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    process = _cli("overlay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--layer", "pool", *FAST)
    assert process.returncode == 0, process.stderr
    assert "1x1 map" in process.stderr


def test_the_console_script_imports_a_factory_from_the_current_folder(tmp_path) -> None:
    script = shutil.which("camkit")
    if script is None:
        pytest.skip("the camkit console script is not installed in this environment")
    shutil.copy(TESTS / "factory_model.py", tmp_path / "mymodels.py")
    _picture(tmp_path / "in" / "a.png", 1)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.run([script, "overlay", "in", "-o", "out", "--model", "mymodels:tiny", *FAST],
                             cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=300)
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "out" / "a_gradcam.png").exists()


# 5. one bad input never aborts the run ------------------------------------------------------------------

def test_a_volume_among_images_and_a_nan_image_lose_only_themselves(tmp_path) -> None:
    folder = tmp_path / "in"
    for index in range(3):
        _picture(folder / f"img{index}.png", index)
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(folder / "black.png")  # std 0: NaN after standardising
    np.save(folder / "stray.npy", np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    process = _cli("overlay", str(folder), "-o", str(out), "--model", "factory_model:per_image_standardising",
                   "--normalize", "none", "--batch-size", "4", *FAST)
    assert process.returncode == 1, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and "Traceback" not in process.stderr
    assert any("black.png" in line and "NaN" in line for line in errors)
    assert any("stray.npy" in line and "3-D volume" in line for line in errors)
    status = {Path(row["input"]).name: row["status"] for row in _rows(out)}
    assert status == {"img0.png": "ok", "img1.png": "ok", "img2.png": "ok", "black.png": "error", "stray.npy": "error"}
    assert sorted(path.name for path in out.glob("*.png")) == ["img0_gradcam.png", "img1_gradcam.png",
                                                                "img2_gradcam.png"]


# 6. interrupts and resumes ------------------------------------------------------------------------------

@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_exits_130_in_one_line_and_keeps_what_finished(tmp_path, presses) -> None:
    folder = tmp_path / "in"
    for index in range(400):
        _picture(folder / f"img{index:03d}.png", index, size=(64, 64))
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "camkit", "overlay", str(folder), "-o", str(out),
                                "--method", "gradcam,smoothgradcam++", "--batch-size", "4", "--workers", "1",
                                "--quiet"], stderr=subprocess.PIPE, text=True, env=environment)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 6:
        time.sleep(0.1)
    for _press in range(presses):  # two in quick succession: the second must not cut the clean-up short
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr, stderr
    finished = {path.name for path in out.glob("*.png")}
    recorded = {Path(row["output"]).name for row in _rows(out) if row["status"] == "ok"}
    assert len(finished) < 800 and recorded and recorded <= finished
    assert not list(out.glob("*.part"))


def test_a_resume_checks_every_output_and_removes_stale_parts(tmp_path) -> None:
    folder = tmp_path / "in"
    for index in range(3):
        _picture(folder / f"img{index}.png", index)
    out = tmp_path / "out"
    assert main(["overlay", str(folder), "-o", str(out), *FAST]) == 0
    assert not list(out.glob("*_map.npy"))
    assert main(["overlay", str(folder), "-o", str(out), "--save-maps", "npy", *FAST]) == 0  # maps asked for now
    assert sorted(path.name for path in out.glob("*_map.npy")) == [f"img{i}_gradcam_map.npy" for i in range(3)]
    (out / "img1_gradcam_map.npy").unlink()  # as a kill -9 between the overlay and its map would leave it
    stale = out / ".camkit-0123456789ab.dead.part"
    stale.write_bytes(b"half")
    from camkit.app.io import _temporary_prefix

    left_over = out / f"{_temporary_prefix(out / 'img1_gradcam_map.npy')}dead.part"
    left_over.write_bytes(b"half a map")
    before = (out / "img0_gradcam.png").stat().st_mtime_ns
    assert main(["overlay", str(folder), "-o", str(out), "--save-maps", "npy", *FAST]) == 0
    assert (out / "img1_gradcam_map.npy").exists() and not left_over.exists()
    assert (out / "img0_gradcam.png").stat().st_mtime_ns == before  # complete files are not redone


def test_a_killed_run_resumes(tmp_path) -> None:
    folder = tmp_path / "in"
    for index in range(200):
        _picture(folder / f"img{index:03d}.png", index, size=(64, 64))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camkit", "overlay", str(folder), "-o", str(out), "--method",
               "gradcam,smoothgradcam++", "--batch-size", "4", "--save-maps", "npy", "--workers", "0", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 6:
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=60)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    rows = _rows(out)
    assert len(rows) == 400 and {row["status"] for row in rows} <= {"ok", "skipped (exists)"}
    assert len(list(out.glob("*_map.npy"))) == 400 and len(list(out.glob("*.png"))) == 400
    assert not list(out.glob("*.part"))


# 7. small ones ----------------------------------------------------------------------------------------------

def test_a_symlink_loop_is_walked_once(tmp_path) -> None:
    folder = tmp_path / "in"
    _picture(folder / "sub" / "a.png", 1)
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    for entry in (str(folder), f"{folder}/**/*.png"):
        out = tmp_path / f"out{len(entry)}"
        started = time.monotonic()
        assert main(["overlay", entry, "-o", str(out), *FAST]) == 0
        assert time.monotonic() - started < 60
        assert [Path(row["input"]).name for row in _rows(out)] == ["a.png"]


def test_outputs_follow_the_users_umask(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    previous = os.umask(0o027)
    try:
        assert main(["overlay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--save-maps", "npy", *FAST]) == 0
    finally:
        os.umask(previous)
    for name in ("a_gradcam.png", "a_gradcam_map.npy", "manifest.csv"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o640, name


@pytest.mark.parametrize("kind", ["assert", "value", "index"])
def test_a_model_that_raises_on_some_images_fails_only_those(tmp_path, kind, monkeypatch) -> None:
    from ..helpers import user_code_on_path

    monkeypatch.setenv("PICKY_ERROR", kind)
    folder = tmp_path / "in"
    for index in range(4):
        _picture(folder / f"dark{index}.png", index, (32, 32))
    Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "bright.png")
    out = tmp_path / "out"
    with user_code_on_path():
        code = main(["overlay", str(folder), "-o", str(out), "--model", "factory_model:picky",
                     "--method", "gradcam,scorecam", "--batch-size", "5", *FAST])
    assert code == 1
    rows = {(Path(row["input"]).name, row["method"]): row for row in _rows(out)}
    assert len(rows) == 10
    for (name, method), row in rows.items():
        if name == "bright.png":
            assert row["status"] == "error" and "refuses bright images" in row["error"], row
        else:
            assert row["status"] == "ok" and (out / row["output"]).exists(), row


def test_two_runs_into_one_folder_at_once_keep_both_runs_rows(tmp_path) -> None:
    for index in range(6):
        _picture(tmp_path / "x" / f"a{index}.png", index)
        _picture(tmp_path / "y" / f"b{index}.png", 10 + index)
    out = tmp_path / "out"
    runs = [subprocess.Popen([sys.executable, "-m", "camkit", "overlay", str(tmp_path / folder), "-o", str(out),
                              "--batch-size", "1", *FAST], stderr=subprocess.PIPE, text=True)
            for folder in ("x", "y")]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
    assert len(_rows(out)) == 12


def test_a_corrupt_score_is_cleared_and_the_report_still_written(tmp_path) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    out = tmp_path / "out"
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    text = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()
    fields = text[1].split(",")
    fields[5] = "abc"  # the score
    (out / "manifest.csv").write_text("\n".join([text[0], ",".join(fields), 'z.png,"broken']) + "\n", encoding="utf-8")
    process = _cli("overlay", str(tmp_path / "in"), "-o", str(out), "--report", "--workers", "0")
    assert process.returncode == 0, process.stderr
    warnings = [line for line in process.stderr.splitlines() if "manifest.csv" in line and "damaged" in line]
    assert len(warnings) == 1 and "cleared 1 value" in warnings[0] and "Traceback" not in process.stderr
    assert (out / "report.html").exists()


def test_an_unlistable_subfolder_is_a_line_and_a_row(tmp_path, monkeypatch, capsys) -> None:
    _picture(tmp_path / "in" / "a.png", 1)
    _picture(tmp_path / "in" / "locked" / "b.png", 2)
    locked = tmp_path / "in" / "locked"
    listing = Path.iterdir

    def refusing(self: Path):
        if self == locked:  # chmod 000 does not stop root, who runs CI: refuse the listing itself
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refusing)
    out = tmp_path / "out"
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), *FAST]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "locked" in line]
    assert len(lines) == 1 and "cannot list folder: Permission denied" in lines[0]
    rows = {Path(row["input"]).name: row for row in _rows(out)}
    assert rows["a.png"]["status"] == "ok"
    assert rows["locked"]["status"] == "error" and "Permission denied" in rows["locked"]["error"]


def test_the_same_folder_typed_relative_then_absolute_keeps_one_row_each(tmp_path, monkeypatch) -> None:
    for index in range(2):
        _picture(tmp_path / "in" / f"a{index}.png", index)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["overlay", "in", "-o", "out", *FAST]) == 0
    assert main(["overlay", str(tmp_path / "in"), "-o", str(out), "--overwrite", *FAST]) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(row["status"] == "ok" and row["predicted_class"] != "" for row in rows)
