"""Drawing a DetectionExplanation: boxes over maps, one panel per detection, a folder with one file per detection."""
from __future__ import annotations

import json

import pytest
import torch

from camkit.results import DetectionExplanation
from camkit.viz import detection_figure, detection_overlays


@pytest.fixture
def result() -> DetectionExplanation:
    maps = torch.rand(2, 32, 32)
    return DetectionExplanation(
        images=torch.rand(2, 3, 32, 32), boxes=[torch.tensor([[2.0, 2.0, 12.0, 20.0], [15.0, 5.0, 30.0, 30.0]]),
                                               torch.zeros(0, 4)],
        labels=[torch.tensor([1, 3]), torch.zeros(0, dtype=torch.long)], scores=[torch.tensor([0.9, 0.4]), torch.zeros(0)],
        maps=[maps, torch.zeros(0, 32, 32)], keys=[torch.tensor([7, 9]), torch.zeros(0, dtype=torch.long)],
        method="gradcam", layer="model.15", family="ultralytics", class_names=["a", "b", "c", "d"])


def test_combined_map_is_the_largest_and_an_image_without_detections_is_blank(result) -> None:
    combined = result.combined()
    torch.testing.assert_close(combined[0], result.maps[0].amax(0))
    assert float(combined[1].abs().max()) == 0.0 and result.num_detections == 2


def test_overlays_draw_each_box_on_its_map(result) -> None:
    combined = detection_overlays(result)
    single = detection_overlays(result, per_detection=True)
    assert combined[0].shape == (3, 32, 32) and combined[0].dtype == torch.uint8
    assert single[0].shape == (2, 3, 32, 32) and single[1].shape[0] == 0
    # The first box's left edge is white in the combined view and in its own panel, not in the other's.
    assert bool((combined[0][:, 2:20, 2] == 255).all()) and bool((single[0][0][:, 2:20, 2] == 255).all())
    assert not bool((single[0][1][:, 8:18, 2] == 255).all())


def test_figure_has_a_combined_panel_and_one_per_detection(result) -> None:
    figure = detection_figure(result)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:3] == ["all detections", "b 0.90", "d 0.40"] and len(figure.axes) == 6


def test_save_folder_lists_every_detection(result, tmp_path) -> None:
    result.save(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [(row["label_name"], row["key"]) for row in record["detections"]] == [("b", 7), ("d", 9)]
    assert (tmp_path / "out" / "0000_01_overlay.png").exists() and (tmp_path / "out" / "0001_detections.png").exists()
    assert result.save(tmp_path / "figure.png").exists()
