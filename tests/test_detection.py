"""The detector adapters against each family's own post-processing: ultralytics' NMS, DETR's probabilities, torchvision's dicts."""
from __future__ import annotations

import pytest
import torch

from camkit.detection import (
    DetectionScore,
    DetrDetector,
    TorchvisionDetector,
    YoloDetector,
    detector_of,
    matched,
    strongest,
    unwrapped,
)

from .helpers import tiny_detr, tiny_fasterrcnn

# Small models: on one thread (thread hand-offs cost more than the maths, the more so on a loaded machine).
pytestmark = pytest.mark.usefixtures("single_thread")


def forward(model: torch.nn.Module, x: torch.Tensor):
    """The model's output without autograd, and camkit's adapter for it."""
    with torch.no_grad():
        return model(x), detector_of(model)


def test_yolo_detections_are_ultralytics_nms_anchors(yolo) -> None:
    from ultralytics.utils.nms import non_max_suppression

    output, detector = forward(yolo, torch.rand(2, 3, 64, 64))
    assert isinstance(detector, YoloDetector) and detector.default_layer(yolo) == "model.15"
    found = detector.found(output, (64, 64), 0.6)
    theirs, anchors = non_max_suppression(output[0].clone(), conf_thres=0.6, iou_thres=0.7, return_idxs=True)
    for image, their, their_anchors in zip(found, theirs, anchors):
        assert len(image) == their.shape[0] > 3
        order = their[:, 4].argsort(descending=True)
        torch.testing.assert_close(image.keys, their_anchors[order].long())
        torch.testing.assert_close(image.boxes, their[order, :4])
        torch.testing.assert_close(image.scores, their[order, 4])
        torch.testing.assert_close(image.labels, their[order, 5].long())
        # A detection's score is its anchor's class confidence, which DetectionScore reads in any output.
        box, label, key = image.boxes[0], int(image.labels[0]), int(image.keys[0])
        assert torch.equal(DetectionScore(detector, box, label, key)(output), output[0][:, 4 + label, key])


def test_detr_scores_are_query_probabilities_and_boxes_scaled() -> None:
    model = tiny_detr()
    output, detector = forward(model, torch.rand(2, 3, 64, 48))
    assert isinstance(detector, DetrDetector) and detector.default_layer(model) == "model.input_projection"
    found = detector.found(output, (64, 48), 0.0)
    probabilities = output.logits.softmax(-1)[..., :-1]  # no-object left out
    for index, image in enumerate(found):
        assert len(image) == 10 and bool((image.scores[:-1] >= image.scores[1:]).all())
        torch.testing.assert_close(image.scores, probabilities[index, image.keys, image.labels])
        torch.testing.assert_close(image.labels, probabilities[index, image.keys].argmax(-1))
        cx, cy, w, h = output.pred_boxes[index, image.keys].unbind(-1)
        expected = torch.stack([(cx - w / 2) * 48, (cy - h / 2) * 64, (cx + w / 2) * 48, (cy + h / 2) * 64], -1)
        torch.testing.assert_close(image.boxes, expected)
    kept = detector.found(output, (64, 48), float(probabilities.amax(-1)[0].median()))
    assert 0 < len(kept[0]) < 10 and bool((kept[0].scores > probabilities.amax(-1)[0].median()).all())


def test_torchvision_detections_are_its_dicts_above_the_threshold() -> None:
    model = tiny_fasterrcnn()
    output, detector = forward(model, torch.rand(2, 3, 64, 64))
    assert isinstance(detector, TorchvisionDetector)
    threshold = float(output[0]["scores"].median())
    found = detector.found(output, (64, 64), threshold)
    for index, (image, theirs) in enumerate(zip(found, output)):
        above = theirs["scores"] > threshold
        assert len(image) == int(above.sum()) > 0
        torch.testing.assert_close(image.scores, theirs["scores"][above])
        torch.testing.assert_close(image.boxes, theirs["boxes"][image.keys])
        # The same detection scored again by overlap: itself.
        score = DetectionScore(detector, image.boxes[0], int(image.labels[0]), -1)(output)
        assert score[index] == image.scores[0]


def test_given_boxes_match_the_best_overlap_of_their_label_or_score_zero(yolo) -> None:
    with torch.no_grad():
        output = yolo(torch.rand(1, 3, 64, 64))
    found = YoloDetector(80, 15).found(output, (64, 64), 0.5)
    best = found[0]
    shifted = best.boxes[:2] + 1.0  # overlaps its detection by far more than 0.5
    wanted = [{"boxes": torch.cat([shifted, torch.tensor([[0.0, 0.0, 1.0, 1.0]])]),
               "labels": torch.cat([best.labels[:2], torch.tensor([3])])}]
    result = matched(found, wanted, 0.5)[0]
    assert result.keys[:2].tolist() == best.keys[:2].tolist() and int(result.keys[2]) == -1
    torch.testing.assert_close(result.scores[:2], best.scores[:2])
    assert float(result.scores[2]) == 0.0 and result.boxes[2].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert [len(image) for image in strongest(found, 3)] == [3]


def test_yolo_wrapper_is_unwrapped_and_other_models_are_not_detectors() -> None:
    ultralytics = pytest.importorskip("ultralytics")
    wrapper = ultralytics.YOLO("yolov8n.yaml")  # built from the yaml, nothing downloaded
    assert unwrapped(wrapper) is wrapper.model and isinstance(detector_of(wrapper), YoloDetector)
    assert detector_of(torch.nn.Conv2d(3, 3, 1)) is None


def test_torchvision_default_layers_run_and_feed_every_head() -> None:
    from torchvision.models import detection

    ssdlite = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    retina = detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    assert detector_of(ssdlite).default_layer(ssdlite) == "backbone.features.0"  # SSDlite calls its stages one by one
    assert detector_of(retina).default_layer(retina) == "backbone.body.layer4"
    assert detector_of(tiny_fasterrcnn()).default_layer(tiny_fasterrcnn()) == "backbone"
