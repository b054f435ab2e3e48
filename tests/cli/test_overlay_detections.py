"""``camkit overlay`` with a detector: one overlay per image with every box, one file and one table row per detection."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.app.models import load_model
from camkit.cli import main
from camkit.detection import YoloDetector, detector_of

pytestmark = pytest.mark.usefixtures("single_thread")


def test_yolo_yaml_overlays_every_detection_and_resumes(tmp_path: Path, offline) -> None:
    pytest.importorskip("ultralytics")
    rng = np.random.default_rng(0)
    for name, size in (("a", (48, 80)), ("b", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    arguments = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", "yolov8n.yaml",
                 "--input-size", "64", "--score-threshold", "0", "--max-detections", "2", "--per-detection",
                 "--workers", "0", "--quiet"]
    assert main(["overlay", *arguments]) == 0
    with open(out / "detections.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(Path(row["input"]).name, row["detection"]) for row in rows] == [
        ("a.png", "0"), ("a.png", "1"), ("b.png", "0"), ("b.png", "1")]
    assert all(row["label_name"] and float(row["score"]) > 0 and row["x2"] for row in rows)
    with Image.open(out / "a_gradcam.png") as picture:
        assert picture.size == (80, 48)  # at the image's own size, boxes scaled to it
    assert (out / "a_gradcam_det01.png").exists()
    # A rerun skips the finished images and keeps their detections.
    written = (out / "a_gradcam.png").stat().st_mtime_ns
    assert main(["overlay", *arguments]) == 0
    assert (out / "a_gradcam.png").stat().st_mtime_ns == written
    with open(out / "detections.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 4
    with open(out / "manifest.csv", newline="") as file:
        assert {row["status"] for row in csv.DictReader(file)} == {"ok"}


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
