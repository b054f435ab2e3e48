"""explain_detections: each detection's map equals its own call, YOLO's equals a hand-made Grad-CAM, the model is left as found."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit
from camkit.detection import DetectionScore, detector_of
from camkit.explainers.detections import detection_gradients

from ..helpers import (
    NEEDS_CLASS_LOGITS,
    no_hooks_left,
    quick_options,
    reference_capture,
    reference_finish,
    tiny_detr,
    tiny_fasterrcnn,
    tiny_maskrcnn,
    tiny_yolo_seg,
)

# Small models: on one thread (thread hand-offs cost more than the maths, the more so on a loaded machine).
pytestmark = pytest.mark.usefixtures("single_thread")


def single_box_maps(explainer: camkit.Explainer, x: torch.Tensor, result: camkit.DetectionExplanation,
                    image: int) -> torch.Tensor:
    """Each detection of ``image`` explained by its own call, with the one-detection target."""
    detector = detector_of(explainer.model)
    return torch.cat([
        explainer.explain(x[image:image + 1], DetectionScore(detector, box, label, key)).maps
        for box, label, key in zip(result.boxes[image], result.labels[image].tolist(), result.keys[image].tolist())
    ])


def test_yolo_maps_are_grad_cam_of_each_anchors_confidence(yolo) -> None:
    x = torch.rand(2, 3, 64, 64)
    result = camkit.GradCAM(yolo).explain_detections(x, score_threshold=0.5, max_detections=4)
    assert result.layer == "model.15" and result.family == "ultralytics" and [len(s) for s in result.scores] == [4, 4]
    for image in range(2):
        for row, (label, anchor) in enumerate(zip(result.labels[image].tolist(), result.keys[image].tolist())):
            activations, gradients = reference_capture(
                yolo, yolo.model[15], x[image:image + 1], lambda output, label=label, anchor=anchor: output[0][:, 4 + label, anchor])
            expected = reference_finish((gradients.mean((2, 3), keepdim=True) * activations).sum(1), (64, 64))
            np.testing.assert_allclose(result.maps[image][row:row + 1].numpy(), expected, atol=1e-4)
        # Different detections, different maps.
        assert float((result.maps[image][0] - result.maps[image][1]).abs().max()) > 0.05
    assert all(p.grad is None for p in yolo.parameters())


@pytest.mark.parametrize("build", [tiny_detr, tiny_fasterrcnn], ids=["detr", "fasterrcnn"])
def test_each_detection_map_equals_its_single_box_call(build) -> None:
    model = build()
    x = torch.rand(2, 3, 64, 64)
    explainer = camkit.GradCAMPlusPlus(model)
    result = explainer.explain_detections(x, score_threshold=0.0, max_detections=3)
    assert [len(maps) for maps in result.maps] == [3, 3]
    for image in range(2):
        torch.testing.assert_close(result.maps[image], single_box_maps(explainer, x, result, image), atol=1e-5, rtol=0)
        assert float((result.maps[image][0] - result.maps[image][2]).abs().max()) > 1e-3
    assert all(bool((maps >= 0).all() and (maps <= 1).all()) for maps in result.maps)


@pytest.mark.parametrize("vmapped", [True, False])
def test_batched_backwards_equal_one_backward_per_score(vmapped: bool) -> None:
    weights = torch.randn(3, 5)
    activations = torch.rand(2, 3, requires_grad=True)
    outputs = activations @ weights
    image_index = torch.tensor([0, 0, 1, 1])
    scores = torch.stack([outputs[0, 1], outputs[0, 4] ** 2, outputs[1, 0], outputs[1, 2].exp()])
    expected = [torch.autograd.grad(score, activations, retain_graph=True)[0][image] for score, image in
                zip(scores, image_index)]
    batched = detection_gradients(scores, [activations], image_index, vmapped=vmapped)[0]
    torch.testing.assert_close(batched, torch.stack(expected))


# Every CAM method; the attention methods need a transformer and the pixel methods refuse detectors (below).
# RandomCAM draws its weights per row, so a batch of detections and one detection draw different weights.
@pytest.mark.parametrize(
    "name", sorted(name for name, cls in camkit.METHODS.items() if name != "randomcam" and not issubclass(
        cls, (camkit.AttentionExplainer, camkit.PixelExplainer)))
)
def test_every_method_explains_yolo_detections(yolo, name: str) -> None:
    cls = camkit.METHODS[name]
    explainer = cls(yolo, **quick_options(cls))
    x = torch.rand(1, 3, 64, 64)
    if name in NEEDS_CLASS_LOGITS:
        with pytest.raises(camkit.CamkitError, match="detector"):
            explainer.explain_detections(x)
        return
    flags = {module: module.training for module in yolo.modules()}
    with torch.inference_mode():
        result = explainer.explain_detections(x, score_threshold=0.5, max_detections=2)
    maps = result.maps[0]
    assert maps.shape == (2, 64, 64) and bool(torch.isfinite(maps).all()) and float(maps.amax()) == 1.0
    torch.testing.assert_close(maps, single_box_maps(explainer, x, result, 0), atol=1e-5, rtol=0)
    assert no_hooks_left(yolo) and all(module.training == flag for module, flag in flags.items())
    assert all(p.grad is None for p in yolo.parameters())


def test_given_boxes_are_explained_and_an_unmatched_box_gets_an_empty_map(yolo) -> None:
    x = torch.rand(1, 3, 64, 64)
    explainer = camkit.GradCAM(yolo)
    own = explainer.explain_detections(x, score_threshold=0.5, max_detections=2)
    given = [{"boxes": torch.cat([own.boxes[0][1:] + 0.5, torch.tensor([[0.0, 0.0, 2.0, 2.0]])]),
              "labels": torch.cat([own.labels[0][1:], torch.tensor([7])])}]
    result = explainer.explain_detections(x, given, score_threshold=0.5)
    torch.testing.assert_close(result.maps[0][0], own.maps[0][1])
    assert result.keys[0].tolist() == [int(own.keys[0][1]), -1] and float(result.scores[0][1]) == 0.0
    assert float(result.maps[0][1].abs().max()) == 0.0


def test_refusals_say_what_to_do(yolo) -> None:
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(camkit.CamkitTypeError, match="not a detector"):
        camkit.GradCAM(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())).explain_detections(x)
    with pytest.raises(camkit.CamkitError, match="augment"):
        camkit.GradCAM(yolo, augment=True).explain_detections(x)
    with pytest.raises(camkit.CamkitError, match="max_detections"):
        camkit.GradCAM(yolo).explain_detections(x, max_detections=0)
    nothing = camkit.GradCAM(yolo).explain_detections(x, score_threshold=0.999)
    assert nothing.num_detections == 0 and nothing.maps[0].shape == (0, 64, 64) and nothing.combined().shape == (1, 64, 64)


def test_yolo_wrapper_is_explained_as_the_network_inside() -> None:
    ultralytics = pytest.importorskip("ultralytics")
    wrapper = ultralytics.YOLO("yolov8n.yaml")  # built from the yaml, nothing downloaded
    explainer = camkit.GradCAM(wrapper, "model.15")
    assert explainer.model is wrapper.model and explainer.layers[0][1] is wrapper.model.model[15]
    result = explainer.explain_detections(torch.rand(1, 3, 64, 64), score_threshold=0.0, max_detections=1)
    assert result.layer == "model.15" and result.maps[0].shape == (1, 64, 64)


def test_pixel_methods_refuse_detections_in_one_line(yolo) -> None:
    with pytest.raises(camkit.CamkitError, match="does not explain detections"):
        camkit.Saliency(yolo).explain_detections(torch.rand(1, 3, 64, 64))


def _hand_mask_score(probabilities: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """Mean mask probability over the detection's own mask (probability > 0.5, within ``inside``), by hand."""
    region = probabilities.detach() > 0.5
    if inside is not None:
        region &= inside
    return probabilities[region].sum() / max(int(region.sum()), 1)


def test_mask_rcnn_mask_scores_are_grad_cam_of_each_detections_mean_mask_probability() -> None:
    torch.manual_seed(0)
    model = tiny_maskrcnn()
    x = torch.rand(1, 3, 64, 64)
    explainer = camkit.GradCAM(model)
    result = explainer.explain_detections(x, score_threshold=0.0, max_detections=3, score="mask")
    boxes = explainer.explain_detections(x, score_threshold=0.0, max_detections=3)
    assert len(result.labels[0]) == 3 and torch.equal(result.keys[0], boxes.keys[0])  # chosen by their box scores
    with torch.no_grad():
        masks = model(x)[0]["masks"][:, 0]
    layer = dict(model.named_modules())[result.layer]
    for row, key in enumerate(result.keys[0].tolist()):
        assert float(result.scores[0][row]) == pytest.approx(float(_hand_mask_score(masks[key])), abs=1e-5)
        activations, gradients = reference_capture(
            model, layer, x, lambda output, key=key: _hand_mask_score(output[0]["masks"][key, 0])[None])
        expected = reference_finish((gradients.mean((2, 3), keepdim=True) * activations).sum(1), (64, 64))
        np.testing.assert_allclose(result.maps[0][row:row + 1].numpy(), expected, atol=1e-4)
    # The mask's score explains something else than the box's.
    assert float((result.maps[0] - boxes.maps[0]).abs().max()) > 1e-3
    # Each map equals its single-detection call with the mask-scoring target (the path the perturbation methods take).
    detector = detector_of(model).scoring_masks()
    single = torch.cat([explainer.explain(x, DetectionScore(detector, box, label, key)).maps for box, label, key in
                        zip(result.boxes[0], result.labels[0].tolist(), result.keys[0].tolist())])
    torch.testing.assert_close(result.maps[0], single, atol=1e-5, rtol=0)


def test_yolo_seg_mask_scores_are_grad_cam_of_each_anchors_cropped_mask() -> None:
    from ultralytics.utils import ops

    torch.manual_seed(0)
    model = tiny_yolo_seg()
    x = torch.rand(2, 3, 64, 64)
    explainer = camkit.GradCAM(model)
    boxes = explainer.explain_detections(x, score_threshold=0.5, max_detections=3)  # YOLO-seg's boxes work too
    result = explainer.explain_detections(x, score_threshold=0.5, max_detections=3, score="mask")
    assert result.layer == "model.15" and [len(s) for s in result.scores] == [3, 3]
    assert all(torch.equal(a, b) for a, b in zip(result.keys, boxes.keys))
    classes = model.model[-1].nc

    def mask_of(output, image: int, anchor: int) -> tuple[torch.Tensor, torch.Tensor]:
        (prediction, proto), _ = output
        coefficients = prediction[image, 4 + classes:, anchor]
        probabilities = (coefficients @ proto[image].flatten(1)).reshape(proto.shape[2:]).sigmoid()
        centre, size = prediction[image, :2, anchor].detach(), prediction[image, 2:4, anchor].detach()
        x0, y0 = ((centre - size / 2) / 4).tolist()
        x1, y1 = ((centre + size / 2) / 4).tolist()
        columns, rows = torch.arange(proto.shape[3])[None, :], torch.arange(proto.shape[2])[:, None]
        return probabilities, (columns >= x0) & (columns < x1) & (rows >= y0) & (rows < y1)

    with torch.no_grad():
        output = model(x)
    for image in range(2):
        anchors = result.keys[image]
        # The mask is ultralytics' own: its process_mask binarises the same cropped pixels.
        (prediction, proto), _ = output
        theirs = ops.process_mask(proto[image], prediction[image, 4 + classes:, anchors].T,
                                  ops.xywh2xyxy(prediction[image, :4, anchors].T), (64, 64))
        for row, anchor in enumerate(anchors.tolist()):
            probabilities, inside = mask_of(output, image, anchor)
            assert torch.equal(theirs[row] > 0.5, (probabilities > 0.5) & inside)
            assert float(result.scores[image][row]) == pytest.approx(float(_hand_mask_score(probabilities, inside)),
                                                                     abs=1e-5)
            # On the whole batch (as camkit's one forward is): only this image's score, the others' zero.
            activations, gradients = reference_capture(
                model, model.model[15], x,
                lambda out, image=image, anchor=anchor: torch.stack(
                    [_hand_mask_score(*mask_of(out, image, anchor)) * (index == image) for index in range(2)]))
            expected = reference_finish((gradients.mean((2, 3), keepdim=True) * activations).sum(1), (64, 64))
            np.testing.assert_allclose(result.maps[image][row:row + 1].numpy(), expected[image:image + 1], atol=1e-4)
        assert float((result.maps[image][0] - result.maps[image][1]).abs().max()) > 0.05


def test_mask_scores_are_refused_for_detectors_without_masks(yolo) -> None:
    with pytest.raises(camkit.CamkitError, match="instance segmenter"):
        camkit.GradCAM(yolo).explain_detections(torch.rand(1, 3, 64, 64), score="mask")
    with pytest.raises(camkit.CamkitError, match="'masks'"):
        camkit.GradCAM(tiny_fasterrcnn()).explain_detections(torch.rand(1, 3, 64, 64), score_threshold=0.0,
                                                              score="mask")
    with pytest.raises(camkit.CamkitError, match="score must be"):
        camkit.GradCAM(yolo).explain_detections(torch.rand(1, 3, 64, 64), score="masks")
