"""``camkit overlay`` with a detector: one overlay per image with every box, one file and one manifest row per detection;
resume, the report and a rerun that finds other detections."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.app.manifest import ALL_FIELDS
from camkit.app.models import load_model
from camkit.cli import main
from camkit.detection import YoloDetector, detector_of

from ..helpers import ReportPage

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for name, size in (("a", (48, 80)), ("b", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")


def _arguments(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["overlay", str(folder / "a.png"), str(folder / "b.png"), "-o", str(out), "--model", "yolov8n.yaml",
            "--input-size", "64", "--score-threshold", "0", "--workers", "0", "--quiet", *extra]


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == ALL_FIELDS
        return list(reader)


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> tuple[Path, Path]:
    """One run over two images: two detections each, one file per detection, with the report."""
    pytest.importorskip("ultralytics")
    folder = tmp_path_factory.mktemp("detections")
    _images(folder)
    out = folder / "out"
    torch.manual_seed(0)  # the yaml's random weights, built again the same way by the boxes' test
    assert main(_arguments(folder, out, "--max-detections", "2", "--per-detection", "--report")) == 0
    return folder, out


def test_one_manifest_row_per_detection_with_its_box_label_and_score(explained) -> None:
    folder, out = explained
    rows = _manifest(out)
    assert [(Path(row["input"]).name, row["detection"]) for row in rows] == [
        ("a.png", "0"), ("a.png", "1"), ("b.png", "0"), ("b.png", "1")]
    assert not (out / "detections.csv").exists()  # the manifest is the one table
    names = load_model("yolov8n.yaml").class_names
    for row in rows:
        assert row["status"] == "ok" and row["method"] == "gradcam"
        assert row["predicted_class"] == row["explained_class"] and row["predicted_name"] == names[int(row["predicted_class"])]
        assert 0 < float(row["score"]) <= 1
        x0, y0, x1, y1 = (float(row[name]) for name in ("x0", "y0", "x1", "y1"))
        assert x0 <= x1 and y0 <= y1
        stem = Path(row["input"]).stem
        assert row["overlay"] == f"{stem}_gradcam.png" and row["output"] == f"{stem}_gradcam_det0{row['detection']}.png"
        assert (out / row["output"]).exists()
    scores = [float(row["score"]) for row in rows if row["input"].endswith("a.png")]
    assert scores == sorted(scores, reverse=True)  # best first
    with Image.open(out / "a_gradcam.png") as picture:
        assert picture.size == (80, 48)  # at the image's own size, boxes scaled to it


def test_the_manifest_boxes_are_the_detectors_boxes_in_the_images_pixels(explained) -> None:
    """The box columns are what explain_detections found at the input size, scaled to each image's size."""
    import camkit
    from camkit.app.io import read_rgb
    from camkit.app.runner import Images

    folder, out = explained
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml").model
    rows = [row for row in _manifest(out) if row["input"].endswith("a.png")]
    source = type("Source", (), {"path": folder / "a.png"})()
    pixels = Images([source], (64, 64), (0.0,) * 3, (1.0,) * 3)[0].pixels
    result = camkit.GradCAM(model).explain_detections(pixels[None], score_threshold=0.0, max_detections=2)
    height, width = read_rgb(folder / "a.png").shape[1:]
    expected = result.boxes[0] * torch.tensor([width / 64, height / 64] * 2)
    got = torch.tensor([[float(row[name]) for name in ("x0", "y0", "x1", "y1")] for row in rows])
    assert torch.allclose(got, expected, atol=0.051)
    assert [int(row["predicted_class"]) for row in rows] == result.labels[0].tolist()


def test_the_report_shows_each_image_with_its_boxes_and_every_detections_map(explained) -> None:
    _, out = explained
    page = ReportPage((out / "report.html").read_text(encoding="utf-8"))
    assert [Path(row["input"]).name for row in page.rows] == ["a.png", "b.png"]
    rows = {Path(row["input"]).stem: row for row in _manifest(out)}
    for row in page.rows:
        stem = Path(row["input"]).stem
        sources = [image["src"] for image in row["cells"][1]["imgs"]]
        assert sources == [f"{stem}_gradcam.png", f"{stem}_gradcam_det00.png", f"{stem}_gradcam_det01.png"]
        assert "2 detections" in row["cells"][1]["text"]
        assert rows[stem]["predicted_name"] in row["cells"][1]["text"]
        labels = {f"c{r['predicted_class']}" for r in _manifest(out) if Path(r["input"]).stem == stem}
        assert set(row["attrs"]["data-classes"].split()) == labels  # the class filter finds it by any detection
    assert "4 detections" in (out / "report.html").read_text(encoding="utf-8")


def test_a_rerun_skips_images_whose_detections_are_done_and_redoes_the_rest(tmp_path: Path, offline) -> None:
    pytest.importorskip("ultralytics")
    _images(tmp_path)
    out = tmp_path / "out"
    arguments = _arguments(tmp_path, out, "--max-detections", "2", "--per-detection")
    assert main(arguments) == 0
    before = _manifest(out)
    written = {name: (out / name).stat().st_mtime_ns for name in ("a_gradcam.png", "b_gradcam.png")}
    (out / "b_gradcam_det01.png").unlink()  # b's detections are not all there any more
    assert main(arguments) == 0
    assert (out / "a_gradcam.png").stat().st_mtime_ns == written["a_gradcam.png"]  # done: skipped
    assert (out / "b_gradcam.png").stat().st_mtime_ns != written["b_gradcam.png"]  # redone
    assert (out / "b_gradcam_det01.png").exists()
    assert _manifest(out) == before  # the skipped image keeps its detections' rows; b's are the same again
    # Asking for files per detection that an earlier run did not write redoes the image.
    plain = tmp_path / "plain"
    assert main(_arguments(tmp_path, plain, "--max-detections", "2")) == 0
    assert {row["output"] for row in _manifest(plain)} == {"a_gradcam.png", "b_gradcam.png"}
    assert main(_arguments(tmp_path, plain, "--max-detections", "2", "--per-detection")) == 0
    assert (plain / "a_gradcam_det01.png").exists()


def test_explaining_an_image_again_replaces_all_of_its_detection_rows(tmp_path: Path, offline) -> None:
    pytest.importorskip("ultralytics")
    _images(tmp_path)
    out = tmp_path / "out"
    assert main(_arguments(tmp_path, out, "--max-detections", "3")) == 0
    assert len(_manifest(out)) == 6
    assert main(_arguments(tmp_path, out, "--max-detections", "1", "--overwrite")) == 0
    rows = _manifest(out)
    assert [(Path(row["input"]).name, row["detection"]) for row in rows] == [("a.png", "0"), ("b.png", "0")]
    # A threshold nothing passes: each image's row says it was explained and found nothing.
    assert main(_arguments(tmp_path, out, "--overwrite", "--score-threshold", "0.99", "--report")) == 0
    rows = _manifest(out)
    assert [(Path(row["input"]).name, row["detection"], row["status"], row["output"]) for row in rows] == [
        ("a.png", "", "ok", "a_gradcam.png"), ("b.png", "", "ok", "b_gradcam.png")]
    page = ReportPage((out / "report.html").read_text(encoding="utf-8"))
    assert all("no detections" in row["cells"][1]["text"] for row in page.rows)


def test_torchvision_detector_loads_from_a_local_file_without_downloading(tmp_path: Path, offline) -> None:
    from torchvision.models import detection

    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "detector.pt")
    loaded = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", str(tmp_path / "detector.pt"))
    assert detector_of(loaded.model) is not None and loaded.class_names is None and loaded.std == (1.0, 1.0, 1.0)
    with pytest.raises(Exception, match="--weights a local state-dict"):
        load_model("fasterrcnn_mobilenet_v3_large_320_fpn")


def test_ultralytics_yaml_loads_as_a_yolo_detector(offline) -> None:
    pytest.importorskip("ultralytics")
    loaded = load_model("yolo11n.yaml")
    assert isinstance(detector_of(loaded.model), YoloDetector) and len(loaded.class_names or []) == 80


@pytest.mark.parametrize(("flag", "value"), [("--score-threshold", "1.0"), ("--max-detections", "0")])
def test_detection_options_out_of_range_are_refused_before_anything_is_written(tmp_path: Path, flag, value, capsys) -> None:
    _images(tmp_path)
    assert main(["overlay", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), flag, value]) != 0
    assert flag in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_yolo_seg_run_explains_each_detections_mask_score(tmp_path: Path, offline) -> None:
    """--detection-score mask: the manifest's scores are the mask scores explain_detections(score='mask') gives."""
    pytest.importorskip("ultralytics")
    import camkit
    from camkit.app.runner import Images

    _images(tmp_path)
    out = tmp_path / "out"
    arguments = ["overlay", str(tmp_path / "b.png"), "-o", str(out), "--model", "yolov8n-seg.yaml", "--input-size",
                 "64", "--score-threshold", "0", "--max-detections", "2", "--workers", "0", "--quiet"]
    torch.manual_seed(0)  # the yaml's random weights: the same in the run (in this process) and below
    assert main([*arguments, "--detection-score", "mask"]) == 0
    rows = _manifest(out)
    torch.manual_seed(0)
    model = load_model("yolov8n-seg.yaml").model
    source = type("Source", (), {"path": tmp_path / "b.png"})()
    pixels = Images([source], (64, 64), (0.0,) * 3, (1.0,) * 3)[0].pixels[None]
    masks = camkit.GradCAM(model).explain_detections(pixels, score_threshold=0.0, max_detections=2, score="mask")
    boxes = camkit.GradCAM(model).explain_detections(pixels, score_threshold=0.0, max_detections=2)
    assert [float(row["score"]) for row in rows] == pytest.approx(masks.scores[0].tolist(), abs=1e-6)
    assert masks.scores[0].tolist() != pytest.approx(boxes.scores[0].tolist(), abs=1e-3)
    # A detector without masks refuses it per image, in one line.
    assert main(["overlay", str(tmp_path / "b.png"), "-o", str(tmp_path / "plain"), "--model", "yolov8n.yaml",
                 "--input-size", "64", "--workers", "0", "--quiet", "--detection-score", "mask"]) == 1


def test_detector_overlay_without_workers_uses_the_thread_budget(tmp_path: Path, offline) -> None:
    # --workers left out is None ("from the thread budget"); the detection loader once passed that None to
    # DataLoader, which raised a raw TypeError (mypy found it).
    pytest.importorskip("ultralytics")
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    out = tmp_path / "out"
    arguments = [str(tmp_path / "a.png"), "-o", str(out), "--model", "yolov8n.yaml", "--input-size", "64",
                 "--score-threshold", "0", "--max-detections", "1", "--quiet"]
    assert main(["overlay", *arguments]) == 0
    with open(out / "manifest.csv", newline="") as file:
        assert {row["status"] for row in csv.DictReader(file)} == {"ok"}
