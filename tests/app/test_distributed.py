"""`torchrun -m camkit overlay` on CPU (gloo): same pixels as one process, one merged manifest, resumable."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ..helpers import TESTS, ReportPage, user_code_on_path

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    for i in range(20):
        sub = root / ("a" if i % 3 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")
    torch.manual_seed(0)
    with user_code_on_path():
        from factory_model import tiny

        torch.save(tiny().state_dict(), root / "tiny.pt")
    return root


def _run(command: list[str], extra_env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    # The clone under test first: a subprocess must not pick up another checkout's camkit.
    paths = [str(TESTS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _overlay(folder: Path, out: Path, model: str = "factory_model:tiny") -> list[str]:
    return ["-m", "camkit", "overlay", str(folder / "a"), str(folder / "b"), "-o", str(out), "--model", model,
            "--weights", str(folder / "tiny.pt"), "--method", "gradcam,eigencam", "--batch-size", "3", "--workers", "0"]


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"]


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_ranks_write_the_same_pixels_as_one_process(folder, tmp_path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    assert _run([sys.executable, *_overlay(folder, single)]).returncode == 0
    process = _run([*_torchrun(2), *_overlay(folder, double), "--report"])
    assert process.returncode == 0, process.stderr[-2000:]
    expected = sorted(path.relative_to(single) for path in single.rglob("*.png"))
    assert len(expected) == 40
    assert sorted(path.relative_to(double) for path in double.rglob("*.png")) == expected
    for relative in expected:
        assert np.array_equal(np.asarray(Image.open(single / relative)), np.asarray(Image.open(double / relative)))
    rows = _manifest(double)
    assert len(rows) == 40 and len({(row["input"], row["method"]) for row in rows}) == 40
    assert {row["status"] for row in rows} == {"ok"}
    assert not list(double.glob(".manifest-part-*"))
    # rank 0 wrote the report after merging the parts: every rank's images are in it
    page = ReportPage((double / "report.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 20 and len(page.images) == 40 and not (single / "report.html").exists()


def test_a_killed_rank_leaves_the_rest_and_a_rerun_finishes(folder, tmp_path) -> None:
    out = tmp_path / "out"
    crashed = _run([*_torchrun(2), *_overlay(folder, out, "factory_model:tiny_crashing_on_rank_one")],
                   {"CRASH_AFTER": "8"})
    assert crashed.returncode != 0
    partial = list(out.rglob("*.png"))
    assert 0 < len(partial) < 40
    assert all(Image.open(path).size[0] == 40 for path in partial)  # whole files only
    assert not list(out.rglob("*.part"))
    resumed = _run([*_torchrun(2), *_overlay(folder, out)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = _manifest(out)
    assert len(rows) == 40 and len(list(out.rglob("*.png"))) == 40
    # an image counts as done when both of its overlays exist; the rest is redone
    done = {path.parent / path.name.rsplit("_", 1)[0] for path in partial}
    done = {stem for stem in done if all(stem.parent.joinpath(f"{stem.name}_{m}.png") in partial for m in ("gradcam", "eigencam"))}
    statuses = [row["status"] for row in rows]
    # redone images are "ok"; finished ones keep the row the crashed run recorded (its rank parts are merged),
    # and are "skipped" only where the crash came before that row reached the disk
    assert set(statuses) <= {"ok", "skipped (exists)"} and statuses.count("ok") >= 40 - 2 * len(done)
    assert all(row["predicted_class"] != "" for row in rows if row["status"] == "ok")
    assert not list(out.glob(".manifest-part-*"))


def test_two_ranks_explain_a_detectors_images_as_one_process_does(folder, tmp_path) -> None:
    """A YOLO run under torchrun: each rank its share, the same files and the same per-detection rows as one process."""
    pytest.importorskip("ultralytics")
    single, double = tmp_path / "single", tmp_path / "double"

    def overlay(out: Path) -> list[str]:
        return ["-m", "camkit", "overlay", str(folder / "b"), "-o", str(out), "--model", "factory_model:tiny_yolo",
                "--score-threshold", "0", "--max-detections", "3", "--per-detection", "--workers", "0", "--report"]

    assert (first := _run([sys.executable, *overlay(single)], timeout=300)).returncode == 0, first.stderr[-2000:]
    process = _run([*_torchrun(2), *overlay(double)], timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    expected = sorted(path.relative_to(single) for path in single.rglob("*.png"))
    assert len(expected) == 7 * 4  # 7 images: each one's overlay and its 3 detections' files
    assert sorted(path.relative_to(double) for path in double.rglob("*.png")) == expected
    for relative in expected:
        assert np.array_equal(np.asarray(Image.open(single / relative)), np.asarray(Image.open(double / relative)))
    rows = _manifest(double)
    assert rows == _manifest(single) and len(rows) == 21 and {row["detection"] for row in rows} == {"0", "1", "2"}
    assert not list(double.glob(".manifest-part-*"))
    page = ReportPage((double / "report.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 7 and len(page.images) == 28  # every rank's images, each with its boxes and maps
    # A rerun under torchrun finds every image done and keeps the rows.
    again = _run([*_torchrun(2), *overlay(double)], timeout=300)
    assert again.returncode == 0 and "0 overlays written, 7 skipped" in again.stderr, again.stderr[-2000:]
    assert _manifest(double) == rows


def test_evaluate_reduces_metrics_across_ranks(tmp_path) -> None:
    command = ["-m", "camkit", "evaluate", "--n-images", "12", "--methods", "gradcam,eigencam", "--steps", "8"]
    single = _run([sys.executable, *command])
    out = tmp_path / "out"
    double = _run([*_torchrun(2), *command, "-o", str(out)])
    assert single.returncode == 0 and double.returncode == 0, double.stderr[-2000:]

    def metric_rows(text: str) -> list[list[str]]:
        rows = [line.split("|")[1:-2] for line in text.splitlines() if line.startswith("| gradcam") or line.startswith("| eigencam")]
        return [[cell.strip() for cell in row] for row in rows]  # every column but the timing

    assert len(metric_rows(double.stdout)) == 2  # printed once, by rank 0
    assert metric_rows(double.stdout) == metric_rows(single.stdout)
    # Each rank kept its share; one process resuming into the folder reuses both ranks' records, adding nothing.
    stored = sorted(out.glob(".evaluation/*/*.pt"))
    assert sorted({path.name.split(".")[0] + "." + path.name.split(".")[1] for path in stored}) == [
        f"{m}.rank{r}" for m in ("eigencam", "gradcam") for r in (0, 1)
    ]
    stamps = [path.stat().st_mtime_ns for path in stored]
    again = _run([sys.executable, *command, "-o", str(out)])
    assert again.returncode == 0 and metric_rows(again.stdout) == metric_rows(single.stdout)
    assert sorted(out.glob(".evaluation/*/*.pt")) == stored and [p.stat().st_mtime_ns for p in stored] == stamps
