"""Detectors as adapters: each family's output to boxes, labels and one differentiable score per detection.

Three families, recognised from the model (no import of their packages here):

* torchvision (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite): a
  list of dicts; a detection's score is the dict's ``scores`` entry.
* ultralytics YOLO (v5u, v8, 11 ``DetectionModel``; the ``YOLO()`` wrapper is
  unwrapped by :func:`unwrapped`): the raw ``(B, 4 + classes, anchors)``
  prediction; a detection is an anchor that survived NMS, its score that
  anchor's class confidence, its box that anchor's xywh as xyxy.
* Hugging Face DETR family (``DetrForObjectDetection`` and friends): a query's
  softmax class probability with no-object left out (sigmoid for the friends
  whose logits have no no-object class), boxes from ``pred_boxes``.

Instance segmenters (torchvision's Mask R-CNN, ultralytics YOLO-seg) can be
explained by a detection's mask score instead (:meth:`Detector.scoring_masks`):
the mean of its mask probabilities over its own mask (the pixels where that
probability exceeds 0.5; for YOLO-seg inside its box, as ultralytics crops).

A :class:`Detector` lists the detections of one forward (:meth:`Detector.found`)
and scores one detection again in any later output (:class:`DetectionScore`):
by anchor or query for YOLO and DETR, whose indices mean the same thing in every
forward, and by the best-overlapping box of the same label for torchvision, whose
lists change with the input. This module is pure torch (torchvision's box ops).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import CamkitError, CamkitTypeError

# ultralytics' own predictor suppresses overlaps above this IoU (its `iou` default for predict).
YOLO_NMS_IOU = 0.7
# A detection's mask is where its mask probability exceeds this (torchvision's and ultralytics' own binarisation).
MASK_THRESHOLD = 0.5


@dataclass
class Found:
    """One image's detections, highest score first."""

    boxes: torch.Tensor  # (N, 4) xyxy in input pixels, detached
    labels: torch.Tensor  # (N,) int64
    scores: torch.Tensor  # (N,) differentiable where the forward built a graph
    keys: torch.Tensor  # (N,) int64: the anchor (YOLO), query (DETR) or list position (torchvision); -1: none

    def __len__(self) -> int:
        return self.labels.shape[0]

    def rows(self, index: torch.Tensor) -> Found:
        return Found(self.boxes[index], self.labels[index], self.scores[index], self.keys[index])


class Detector:
    """A family's reading of a detector's output. Subclasses define ``found`` and ``keyed_scores``."""

    family: ClassVar[str] = ""

    def found(self, output: Any, size: tuple[int, int], score_threshold: float) -> list[Found]:
        """Per image, the detections scoring above ``score_threshold`` (after the family's NMS), best first."""
        raise NotImplementedError

    def keyed_scores(self, output: Any, box: torch.Tensor, label: int, key: int, min_iou: float) -> torch.Tensor:
        """``(R,)``: one detection's score in every row of ``output`` (0 where a row has no such detection)."""
        raise NotImplementedError

    def default_layer(self, model: nn.Module) -> str | None:
        """The layer every detection depends on, explained when the user names none (None: camkit's auto rule)."""
        return None

    def scoring_masks(self) -> Detector:
        """This detector explaining each detection's mask score (see :func:`mask_scores`), for instance segmenters."""
        raise CamkitError(
            f"score='mask' needs an instance segmenter (torchvision's Mask R-CNN, ultralytics YOLO-seg); a "
            f"{self.family} detector predicts no masks: use score='box'."
        )


def mask_scores(probabilities: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)``: each ``(H, W)`` mask's mean probability over its own mask (where it exceeds 0.5, within ``inside``).

    The region is chosen without gradient; a detection with an empty mask scores 0 (still in the graph).
    """
    region = probabilities.detach() > MASK_THRESHOLD
    if inside is not None:
        region = region & inside
    region = region.to(probabilities.dtype)
    return (probabilities * region).sum((-2, -1)) / region.sum((-2, -1)).clamp(min=1.0)


class TorchvisionDetector(Detector):
    family = "torchvision"

    def __init__(self, masks: bool = False) -> None:
        self.masks = masks  # explain each detection's mask score (Mask R-CNN) instead of its box score

    def scoring_masks(self) -> Detector:
        return TorchvisionDetector(masks=True)

    def _explained(self, detections: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Each detection's explained score: its ``scores`` entry, or its mask score."""
        if not self.masks:
            return detections["scores"]
        masks = detections.get("masks")
        if not isinstance(masks, torch.Tensor):
            raise CamkitError(
                "score='mask' needs a detector whose output dicts have 'masks' (Mask R-CNN); this one has "
                f"{', '.join(map(str, detections))}: use score='box'."
            )
        return mask_scores(masks.flatten(0, -3) if masks.dim() == 4 else masks)

    def found(self, output: Any, size: tuple[int, int], score_threshold: float) -> list[Found]:
        found = []
        for detections in _dicts(output):  # each image has its own number of detections
            scores = detections["scores"]  # chooses and orders the detections, whichever score is explained
            kept = torch.nonzero(scores.detach() > score_threshold).flatten()
            kept = kept[scores.detach()[kept].argsort(descending=True, stable=True)]
            explained = self._explained(detections)
            found.append(
                Found(
                    detections["boxes"].detach()[kept].float(), detections["labels"][kept].long(), explained[kept], kept
                )
            )
        return found

    def keyed_scores(self, output: Any, box: torch.Tensor, label: int, key: int, min_iou: float) -> torch.Tensor:
        return torch.stack(
            [
                best_match_score(detections, box, label, min_iou, self._explained(detections))
                for detections in _dicts(output)
            ]
        )

    def default_layer(self, model: nn.Module) -> str | None:
        backbone = getattr(model, "backbone", None)
        body = getattr(backbone, "body", None)
        if isinstance(body, nn.Module) and len(list(body.children())):
            # The last backbone stage feeds every FPN level, so every detection depends on it.
            return f"backbone.body.{list(body.named_children())[-1][0]}"
        features = getattr(backbone, "features", None)
        if isinstance(features, nn.Module):  # SSD: the first feature map feeds the extra layers and every head
            # SSDlite runs its feature stages one by one, VGG's SSD the whole Sequential.
            return "backbone.features.0" if type(backbone).__name__.startswith("SSDLite") else "backbone.features"
        # A backbone without FPN returns its one feature map (the RPN's layers are upstream of no score).
        return "backbone" if isinstance(backbone, nn.Module) else None


class YoloDetector(Detector):
    family = "ultralytics"

    def __init__(
        self,
        classes: int,
        first_input: int | None,
        nms_iou: float = YOLO_NMS_IOU,
        masks: int = 0,
        proto_stride: float = 4.0,
        mask_scores: bool = False,
    ) -> None:
        self.classes, self.first_input, self.nms_iou = classes, first_input, nms_iou
        # YOLO-seg: ``masks`` coefficients per anchor follow the classes; its prototypes are 1/proto_stride the input.
        self.masks, self.proto_stride, self.mask_scores = masks, proto_stride, mask_scores

    def scoring_masks(self) -> Detector:
        if not self.masks:
            return super().scoring_masks()
        return YoloDetector(self.classes, self.first_input, self.nms_iou, self.masks, self.proto_stride, True)

    def _prediction(self, output: Any) -> torch.Tensor:
        prediction = output
        while isinstance(prediction, (tuple, list)) and prediction:  # Detect: (y, raw); Segment: ((y, proto), raw)
            prediction = prediction[0]
        if not isinstance(prediction, torch.Tensor) or prediction.dim() != 3 or prediction.shape[1] < 4 + self.classes:
            shape = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
            raise CamkitError(
                f"the YOLO model returned {shape}, not (B, 4 + classes, anchors); camkit reads "
                "ultralytics' Detect head outside export mode (end-to-end heads such as YOLO26's "
                "or YOLOv10's are not supported)."
            )
        return prediction

    def found(self, output: Any, size: tuple[int, int], score_threshold: float) -> list[Found]:
        from torchvision.ops import batched_nms

        prediction = self._prediction(output)
        boxes = xywh_to_xyxy(prediction[:, :4].detach().transpose(1, 2).float())  # (B, A, 4)
        best, labels = prediction[:, 4 : 4 + self.classes].max(dim=1)  # (B, A): each anchor's best class
        found = []
        for image in range(prediction.shape[0]):  # NMS keeps a different number of anchors per image
            anchors = torch.nonzero(best[image].detach() > score_threshold).flatten()
            kept = anchors[
                batched_nms(
                    boxes[image, anchors], best[image, anchors].detach().float(), labels[image, anchors], self.nms_iou
                )
            ]
            explained = best[image, kept]
            if self.mask_scores:
                explained = self._mask_scores(output, torch.full_like(kept, image), kept)
            found.append(Found(boxes[image, kept], labels[image, kept], explained, kept))
        return found

    def keyed_scores(self, output: Any, box: torch.Tensor, label: int, key: int, min_iou: float) -> torch.Tensor:
        prediction = self._prediction(output)
        if self.mask_scores:
            rows = torch.arange(prediction.shape[0], device=prediction.device)
            return self._mask_scores(output, rows, torch.full_like(rows, key))
        return prediction[:, 4 + label, key]

    def _mask_scores(self, output: Any, images: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the mask score of anchor ``anchors[n]`` in image ``images[n]``, its mask as ultralytics makes it:
        the sigmoid of its coefficients times the prototypes, cropped to its box (at the prototypes' resolution)."""
        prediction = self._prediction(output)
        proto = output[0][1] if isinstance(output[0], (tuple, list)) and len(output[0]) > 1 else None
        if not isinstance(proto, torch.Tensor) or proto.dim() != 4:
            raise CamkitError(
                "score='mask' reads a YOLO-seg model's mask prototypes, and this output has none (camkit reads "
                "ultralytics' Segment head outside export mode)."
            )
        start = 4 + self.classes
        coefficients = prediction[images, start : start + self.masks, anchors]  # (N, M)
        probabilities = torch.einsum("nm,nmhw->nhw", coefficients.float(), proto[images].float()).sigmoid()
        height, width = proto.shape[2:]
        x0, y0, x1, y1 = (xywh_to_xyxy(prediction[images, :4, anchors].detach().float()) / self.proto_stride).unbind(1)
        columns = torch.arange(width, device=proto.device)[None, None, :]
        rows = torch.arange(height, device=proto.device)[None, :, None]
        inside = (
            (columns >= x0[:, None, None])
            & (columns < x1[:, None, None])
            & (rows >= y0[:, None, None])
            & (rows < y1[:, None, None])
        )
        return mask_scores(probabilities, inside)

    def default_layer(self, model: nn.Module) -> str | None:
        # The head's first input (P3) feeds the whole top-down/bottom-up path: every scale depends on it.
        return None if self.first_input is None else f"model.{self.first_input}"


class DetrDetector(Detector):
    family = "detr"

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    def _probabilities(self, output: Any) -> torch.Tensor:
        logits = _attribute(output, "logits")
        if logits.shape[-1] == self.num_labels + 1:  # DETR's softmax over classes and "no object"
            return logits.float().softmax(dim=-1)[..., :-1]
        return logits.float().sigmoid()  # the friends scored by a focal loss have no no-object class

    def found(self, output: Any, size: tuple[int, int], score_threshold: float) -> list[Found]:
        probabilities = self._probabilities(output)
        best, labels = probabilities.max(dim=-1)  # (B, Q)
        height, width = size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=best.device)
        boxes = xywh_to_xyxy(_attribute(output, "pred_boxes").detach().float()) * scale
        found = []
        for image in range(best.shape[0]):
            queries = torch.nonzero(best[image].detach() > score_threshold).flatten()
            queries = queries[best[image, queries].detach().argsort(descending=True, stable=True)]
            found.append(Found(boxes[image, queries], labels[image, queries], best[image, queries], queries))
        return found

    def keyed_scores(self, output: Any, box: torch.Tensor, label: int, key: int, min_iou: float) -> torch.Tensor:
        return self._probabilities(output)[:, key, label]

    def default_layer(self, model: nn.Module) -> str | None:
        names = dict(model.named_modules())
        # The projection of the backbone's features feeds the encoder, so every query depends on it.
        return next((name for name in ("model.input_projection", "input_projection") if name in names), None)


class DetectionScore:
    """A target callable: one detection's score in every row of a detector's output, ``(R,)``.

    The same anchor's (YOLO) or query's (DETR) class score; for torchvision the
    score of the detection of ``label`` that overlaps ``box`` most (IoU at
    least ``min_iou``), 0 where there is none. A row of a perturbed or noisy
    copy of the image scores the same detection, so every method can explain it.
    """

    def __init__(self, detector: Detector, box: torch.Tensor, label: int, key: int, min_iou: float = 0.5) -> None:
        self.detector, self.box, self.label, self.key, self.min_iou = detector, box, int(label), int(key), min_iou

    def __call__(self, output: Any) -> torch.Tensor:
        return self.detector.keyed_scores(output, self.box, self.label, self.key, self.min_iou)


def detector_of(model: nn.Module) -> Detector | None:
    """The adapter for ``model``'s family, or None when it is not a detector camkit knows."""
    model = unwrapped(model)
    module = type(model).__module__
    if module.startswith("ultralytics"):
        layers = getattr(model, "model", None)
        head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
        if head is not None and hasattr(head, "nc") and hasattr(head, "stride"):
            inputs = getattr(head, "f", None)
            classes: Any = head.nc
            masks: Any = getattr(head, "nm", 0)  # YOLO-seg's Segment head: mask coefficients per anchor
            strides: Any = head.stride
            # The prototypes are the head's first input (the finest scale) upsampled twice.
            proto_stride = float(strides[0]) / 2 if isinstance(strides, torch.Tensor) and strides.numel() else 4.0
            return YoloDetector(
                int(classes),
                int(inputs[0]) if isinstance(inputs, (list, tuple)) and inputs else None,
                masks=int(masks) if isinstance(masks, int) else 0,
                proto_stride=proto_stride or 4.0,
            )
    if module.startswith("transformers") and type(model).__name__.endswith("ForObjectDetection"):
        config: Any = model.config
        return DetrDetector(int(config.num_labels))
    if module.startswith("torchvision.models.detection"):
        return TorchvisionDetector()
    return None


def unwrapped(model: nn.Module) -> nn.Module:
    """ultralytics' ``YOLO()`` wrapper (its forward predicts without gradients) as the network inside it."""
    is_wrapper = any(cls.__module__ == "ultralytics.engine.model" for cls in type(model).__mro__)
    inner = getattr(model, "model", None)
    return inner if is_wrapper and isinstance(inner, nn.Module) else model


def strongest(found: list[Found], max_detections: int) -> list[Found]:
    """Each image's ``max_detections`` best detections."""
    return [image.rows(torch.arange(min(len(image), max_detections), device=image.keys.device)) for image in found]


def matched(found: list[Found], given: Sequence[Mapping[str, Any]], min_iou: float) -> list[Found]:
    """For each given box and label, the found detection of that label overlapping it most (IoU >= ``min_iou``).

    A given box with no such detection keeps its box and label, score 0 and key -1 (its map is empty).
    """
    from torchvision.ops import box_iou

    if len(given) != len(found):
        raise CamkitError(
            f"detections has {len(given)} entries for a batch of {len(found)} images; give one "
            "dict with 'boxes' (N, 4) and 'labels' (N,) per image."
        )
    result = []
    for image, wanted in zip(found, given):
        if not isinstance(wanted, Mapping) or "boxes" not in wanted or "labels" not in wanted:
            raise CamkitTypeError(
                "each entry of detections must be a dict with 'boxes' (N, 4, xyxy in input pixels) and 'labels' (N,)."
            )
        device = image.boxes.device
        boxes = torch.as_tensor(wanted["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(wanted["labels"], device=device).reshape(-1).long()
        if boxes.shape[0] != labels.shape[0]:
            raise CamkitError(f"detections gives {boxes.shape[0]} boxes and {labels.shape[0]} labels for one image.")
        unmatched = Found(boxes, labels, boxes.new_zeros(boxes.shape[0]), labels.new_full(labels.shape, -1))
        if len(image) == 0:
            result.append(unmatched)
            continue
        overlap = box_iou(boxes, image.boxes)
        overlap = torch.where((labels[:, None] == image.labels[None]) & (overlap >= min_iou), overlap, -1.0)
        best_iou, best = overlap.max(dim=1)
        hit = best_iou >= 0
        # An unmatched box scores a zero that still belongs to the graph, so the batch's backward stays one call.
        scores = torch.where(hit, image.scores[best], image.scores.sum() * 0.0)
        result.append(
            Found(
                torch.where(hit[:, None], image.boxes[best], boxes),
                labels,
                scores,
                torch.where(hit, image.keys[best], unmatched.keys),
            )
        )
    return result


def best_match_score(
    detections: Mapping[str, torch.Tensor],
    box: torch.Tensor,
    label: int,
    min_iou: float,
    explained: torch.Tensor | None = None,
) -> torch.Tensor:
    """A torchvision image's score of the detection of ``label`` overlapping ``box`` most (IoU >= min_iou), else 0;
    ``explained``: the per-detection scores to take it from (its ``scores`` when None, e.g. mask scores)."""
    from torchvision.ops import box_iou

    scores = detections["scores"] if explained is None else explained
    if scores.numel() == 0:
        return scores.sum() * 0.0
    boxes = detections["boxes"].detach()
    overlap = box_iou(box.reshape(1, 4).to(boxes), boxes)[0]
    overlap = torch.where((detections["labels"] == label) & (overlap >= min_iou), overlap, -1.0)
    return scores[overlap.argmax()] if float(overlap.max()) >= 0 else scores.sum() * 0.0


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def _dicts(output: Any) -> list[Mapping[str, torch.Tensor]]:
    if not isinstance(output, (list, tuple)) or not all(isinstance(item, Mapping) for item in output):
        raise CamkitTypeError(
            "a torchvision detector returns a list of dicts with boxes, labels and scores; "
            f"this model returned {type(output).__name__}."
        )
    return list(output)


def _attribute(output: Any, name: str) -> torch.Tensor:
    value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
    if not isinstance(value, torch.Tensor):
        raise CamkitTypeError(
            f"a DETR-family detector's output has '{name}'; this one ({type(output).__name__}) has none."
        )
    return value


__all__ = [
    "DetectionScore",
    "Detector",
    "DetrDetector",
    "Found",
    "TorchvisionDetector",
    "YoloDetector",
    "best_match_score",
    "detector_of",
    "mask_scores",
    "matched",
    "strongest",
    "unwrapped",
    "xywh_to_xyxy",
]
