"""``explain_detections``: one forward lists a detector's detections, and serves all their backwards.

The methods that keep the base capture (one forward, one backward) get every
detection of a batch from one hooked forward; the N scores' gradients come
from vmapped backwards (``autograd.grad`` with ``is_grads_batched``) on a GPU
and from backwards through the retained graph on a CPU (see
:func:`detection_gradients`); each row is the gradient of one detection's
score, taken at its own image. The
methods that run passes of their own (Smooth Grad-CAM++'s noisy copies, the
perturbation family's masked or ablated forwards) explain each detection with
its own call on its image, the target being :class:`~camkit.detection.DetectionScore`:
the same anchor, query or best-overlapping box in every copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..calls import InputsSpec, ModelCall
from ..capture import check_finite, hooked_forward, to_captures
from ..detection import DetectionScore, Detector, Found, detector_of, matched, strongest
from ..errors import CamkitError, CamkitTypeError
from ..layers import auto_layer, find_layer
from ..layouts import patch_size_of, prefix_tokens_of
from ..modes import explaining, full_precision
from ..results import DetectionExplanation
from ..targets import check_finite_scores

# The explainer is typed Any: this module sits below base.py, which calls it from Explainer.explain_detections.
Explainer = Any
# Detections per vmapped backward: its gradients hold (detections x batch) copies of the layer's activations.
DETECTIONS_PER_BACKWARD = 32


def explain_detections(
    explainer: Explainer,
    images: torch.Tensor,
    detections: Sequence[Mapping[str, Any]] | None,
    limits: tuple[float, int, float],
    one_pass: bool,
    score: str = "box",
    inputs: InputsSpec = None,
) -> DetectionExplanation:
    """:meth:`camkit.Explainer.explain_detections` on checked images; ``limits`` are (score_threshold,
    max_detections, min_iou); ``one_pass``: the method keeps the base capture, so the batch is batched;
    ``inputs``: the detector's other inputs (per-image ones follow their image in the one-by-one calls)."""
    score_threshold, max_detections, min_iou = limits
    if images.dim() != 4:
        raise CamkitError(f"explain_detections takes a batch of images (B, C, H, W), got shape {tuple(images.shape)}.")
    _check_options(explainer, score_threshold, max_detections, min_iou)
    model = explainer.model
    detector = detector_of(model)
    if detector is None:
        raise CamkitTypeError(
            f"{type(model).__name__} is not a detector camkit knows (torchvision detection models, ultralytics "
            "YOLO, Hugging Face *ForObjectDetection). For another detector pass target=callable(output) -> (B,) "
            "scores to explainer.explain."
        )
    if score not in ("box", "mask"):
        raise CamkitError(f"score must be 'box' (the detection's score) or 'mask' (its mask's), got {score!r}.")
    if score == "mask":
        detector = detector.scoring_masks()
    size = (images.shape[2], images.shape[3])
    batched = one_pass
    with explaining(model):
        x = images.clone() if images.is_inference() else images
        call = ModelCall.of(model, x, inputs)
        if not explainer.layers:
            explainer.layers = [_default_layer(detector, model, call)]
        layers = explainer.layers
        if batched:
            output, tensors = hooked_forward(model, layers, call, explainer.uses_gradients)
            check_finite(layers, tensors, "activations")
        else:
            with torch.no_grad():
                output = call.run(model)
        with torch.set_grad_enabled(batched and explainer.uses_gradients):
            found = detector.found(output, size, score_threshold)
            chosen = strongest(found, max_detections) if detections is None else matched(found, detections, min_iou)
        if batched:
            maps = _batched_maps(explainer, x, tensors, output, chosen)
        else:
            maps = _maps_one_by_one(explainer, detector, call, chosen, min_iou)
    maps = [torch.where(image.keys[:, None, None] >= 0, image_maps, 0.0) for image, image_maps in zip(chosen, maps)]
    return DetectionExplanation(
        images=images,
        boxes=[image.boxes for image in chosen],
        labels=[image.labels for image in chosen],
        scores=[image.scores.detach() for image in chosen],
        maps=maps,
        keys=[image.keys for image in chosen],
        method=explainer.name or type(explainer).__name__,
        layer=explainer.target_layer_name or "",
        family=detector.family,
    )


def _check_options(explainer: Explainer, score_threshold: float, max_detections: int, min_iou: float) -> None:
    if explainer.needs_class_logits:
        raise CamkitError(
            f"{type(explainer).__name__} weighs a classifier's classes and a detector has none to "
            "weigh; explain detections with a gradient method (Grad-CAM) or Eigen-CAM."
        )
    if explainer.augment:
        raise CamkitError(
            "augment=True flips and rescales copies, which moves the boxes; explain detections with augment=False."
        )
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise CamkitError(f"max_detections must be a positive int, got {max_detections!r}.")
    if not 0.0 <= float(score_threshold) < 1.0 or not 0.0 <= float(min_iou) <= 1.0:
        raise CamkitError(
            f"score_threshold must be in [0, 1) and min_iou in [0, 1]; got {score_threshold!r} and {min_iou!r}."
        )


def _default_layer(detector: Detector, model: torch.nn.Module, x: ModelCall) -> tuple[str, torch.nn.Module]:
    name = detector.default_layer(model)
    return find_layer(model, name) if name is not None else auto_layer(model, x)


def _batched_maps(
    explainer: Explainer, x: torch.Tensor, tensors: list[torch.Tensor], output: Any, chosen: list[Found]
) -> list[torch.Tensor]:
    """Every detection's map from the one forward: rows of the layer's tensors, one per detection."""
    counts = [len(image) for image in chosen]
    image_index = torch.repeat_interleave(
        torch.arange(len(chosen), device=x.device), torch.tensor(counts, device=x.device)
    )
    if not counts or sum(counts) == 0:
        return [x.new_zeros((0, *x.shape[2:])) for _ in chosen]
    scores = torch.cat([image.scores for image in chosen])
    labels = torch.cat([image.labels for image in chosen])
    gradients: list[torch.Tensor | None] = [None] * len(tensors)
    if explainer.uses_gradients:
        check_finite_scores(scores)
        gradients = list(detection_gradients(scores, tensors, image_index))
        check_finite(explainer.layers, gradients, "gradient")
    model = explainer.model
    captures = to_captures(
        [tensor[image_index] for tensor in tensors],
        gradients,
        output,
        scores,
        labels,
        tuple(x.shape[2:]),
        explainer.reshape,
        patch_size_of(model),
        prefix_tokens_of(model),
    )
    with full_precision(x.device):
        layer_maps = [explainer.layer_map(captured).clamp_min(0) for captured in captures]
        maps = explainer.combine(layer_maps, tuple(x.shape[2:]))
    return list(maps.split(counts))


def detection_gradients(
    scores: torch.Tensor, tensors: list[torch.Tensor], image_index: torch.Tensor, *, vmapped: bool | None = None
) -> list[torch.Tensor]:
    """``(N, K, *grid)`` per layer: row n is d scores[n] / d tensor at image ``image_index[n]``.

    ``vmapped`` (default: on CUDA): one ``autograd.grad`` with ``is_grads_batched`` per chunk of
    detections, whose batched kernels fill a GPU. On a CPU, where a batched convolution costs what
    its rows cost, one backward per score through the retained graph measured no slower (YOLOv8n,
    320 x 320, 8 scores: 1.6 s vs 1.7 s on 2 loaded cores; benchmarks/bench_detection.py).
    """
    count = scores.shape[0]
    if not scores.requires_grad:  # every score is a given box's constant 0: nothing matched
        return [torch.zeros_like(tensor[image_index]) for tensor in tensors]
    if vmapped is None:
        vmapped = scores.device.type == "cuda"
    step = DETECTIONS_PER_BACKWARD if vmapped else 1
    parts: list[list[torch.Tensor]] = [[] for _ in tensors]
    with torch.enable_grad():
        for start in range(0, count, step):
            rows = torch.arange(start, min(start + step, count), device=scores.device)
            one_hot = torch.zeros((len(rows), count), dtype=scores.dtype, device=scores.device)
            one_hot[torch.arange(len(rows)), rows] = 1.0
            found = torch.autograd.grad(
                scores,
                tensors,
                grad_outputs=one_hot if vmapped else one_hot[0],
                is_grads_batched=vmapped,
                allow_unused=True,
                retain_graph=bool(rows[-1] < count - 1),
            )
            for part, gradient, tensor in zip(parts, found, tensors):
                if gradient is None:
                    part.append(torch.zeros_like(tensor[image_index[rows]]))
                else:
                    part.append(
                        gradient[torch.arange(len(rows)), image_index[rows]] if vmapped else gradient[image_index[rows]]
                    )
    return [torch.cat(part) for part in parts]


def _maps_one_by_one(
    explainer: Explainer, detector: Detector, call: ModelCall, chosen: list[Found], min_iou: float
) -> list[torch.Tensor]:
    """A method with passes of its own: one call per detection on its image, the same detection in every copy."""
    x = call.x
    maps: list[torch.Tensor] = []
    for index, image in enumerate(chosen):  # each detection is its own call: its copies are its image's
        own = call.rows(slice(index, index + 1))  # the image with its own inputs
        per_detection = [
            explainer.explain(own.x, DetectionScore(detector, box, label, key, min_iou), inputs=own.inputs()).maps
            if key >= 0
            else x.new_zeros((1, *x.shape[2:]))
            for box, label, key in zip(image.boxes, image.labels.tolist(), image.keys.tolist())
        ]
        maps.append(torch.cat(per_detection) if per_detection else x.new_zeros((0, *x.shape[2:])))
    return maps


__all__ = ["DETECTIONS_PER_BACKWARD", "detection_gradients", "explain_detections"]
