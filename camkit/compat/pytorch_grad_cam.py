"""pytorch-grad-cam's API over camkit's explainers: change the import, keep the code, get camkit's maps.

    from camkit.compat.pytorch_grad_cam import GradCAM, ClassifierOutputTarget, show_cam_on_image

    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        grayscale_cam = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # numpy (B, H, W)
    picture = show_cam_on_image(rgb_image, grayscale_cam[0], use_rgb=True)

What is the same: the constructor (``model``, ``target_layers`` list,
``reshape_transform``), the call (``input_tensor``, ``targets``,
``aug_smooth``, ``eigen_smooth``), float32 numpy maps in [0, 1] of the
input's size, the target classes, and the ``with`` block. What differs is
the maps themselves: they are camkit's, exactly what ``camkit.GradCAM(model,
layers)(x, classes)`` returns (README "Coming from pytorch-grad-cam" lists
where the methods' definitions differ). A list of ``ClassifierOutputTarget``
is passed to camkit as class indices; any other per-image targets (these
classes or pytorch-grad-cam's own) run as one callable per image. Nothing here
imports pytorch-grad-cam.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import explainers
from ..errors import CamkitError, CamkitTypeError
from ..explainers import ChannelWeightedExplainer, Explainer
from ..viz import overlay
from ..viz.colors import ColormapSpec


class ClassifierOutputTarget:
    """A class's raw logit in one image's output row."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., self.category]


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """A class's softmax probability in one image's output row."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.softmax(dim=-1)[..., self.category]


class BinaryClassifierOutputTarget:
    """A one-logit binary classifier: the logit for category 1, its negative for category 0."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return (model_output if self.category == 1 else -model_output).sum()


class SemanticSegmentationTarget:
    """A segmenter's evidence for ``category``: its logits summed over ``mask`` (H, W), for one image."""

    def __init__(self, category: int, mask: Any) -> None:
        self.category = category
        self.mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return (model_output[self.category] * self.mask.to(model_output.device, model_output.dtype)).sum()


class FasterRCNNBoxScoreTarget:
    """A torchvision detector's evidence for given boxes in one image: per box, the best same-label detection's
    IoU plus score (IoU at least ``iou_threshold``), summed; 0 when none matches."""

    def __init__(self, labels: Sequence[int], bounding_boxes: Any, iou_threshold: float = 0.5) -> None:
        self.labels = [int(label) for label in labels]
        self.boxes = torch.as_tensor(np.asarray(bounding_boxes), dtype=torch.float32).reshape(-1, 4)
        self.iou_threshold = float(iou_threshold)

    def __call__(self, detections: dict[str, torch.Tensor]) -> torch.Tensor:
        from torchvision.ops import box_iou

        total = detections["scores"].sum() * 0.0  # on the graph even when nothing matches
        if detections["boxes"].numel() == 0:
            return total
        overlaps = box_iou(self.boxes.to(detections["boxes"].device), detections["boxes"].detach())
        for overlap, label in zip(overlaps, self.labels):
            overlap = torch.where(detections["labels"] == label, overlap, -1.0)
            best = int(overlap.argmax())
            if float(overlap[best]) >= self.iou_threshold:
                total = total + overlap[best] + detections["scores"][best]
        return total


def show_cam_on_image(
    img: np.ndarray, mask: Any, use_rgb: bool = False, colormap: ColormapSpec | int = "jet", image_weight: float = 0.5
) -> np.ndarray:
    """One image with its map blended over it, uint8 ``(H, W, 3)`` at the image's own size.

    ``img`` is float32 ``(H, W, 3)`` in [0, 1] (or uint8); ``mask`` a map ``(h, w)`` in [0, 1] at any size,
    resized bilinearly to the image. The blend is camkit's overlay, ``image_weight * img + (1 - image_weight) *
    colormap(mask)``; ``colormap`` is a matplotlib name or Colormap (default jet) or an OpenCV colormap
    constant. ``use_rgb=False`` returns BGR channels, as OpenCV's ``imwrite`` expects.
    """
    image = torch.from_numpy(np.ascontiguousarray(img))
    if image.dim() != 3 or image.shape[-1] != 3:
        raise CamkitError(f"img must be one (H, W, 3) image, got shape {tuple(image.shape)}.")
    if image.is_floating_point() and float(image.max()) > 1:
        raise CamkitError("img holds floats above 1: pass float32 in [0, 1] (or uint8 0..255).")
    heat = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, torch.Tensor) else mask)
    if heat.dim() != 2:
        raise CamkitError(f"mask must be one (h, w) map, got shape {tuple(heat.shape)}; index the batch: cams[0].")
    if isinstance(image_weight, bool) or not isinstance(image_weight, (int, float)) or not 0 <= image_weight <= 1:
        raise CamkitError(f"image_weight must lie in [0, 1], got {image_weight!r}.")
    blended = overlay(
        image.permute(2, 0, 1)[None], heat[None].float(), alpha=1 - float(image_weight), colormap=_colormap(colormap)
    )
    picture = (blended[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return picture if use_rgb else np.ascontiguousarray(picture[..., ::-1])


def _colormap(colormap: ColormapSpec | int) -> ColormapSpec:
    if isinstance(colormap, bool) or not isinstance(colormap, int):
        return colormap
    import cv2
    from matplotlib.colors import ListedColormap

    ramp = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap)[:, 0, ::-1]
    return ListedColormap(ramp.astype(np.float32) / 255)


class PeerStyleCAM:
    """A camkit method behind pytorch-grad-cam's constructor and call (see the module's docstring)."""

    method: ClassVar[type[Explainer]]

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str],
        reshape_transform: Callable[[Any], torch.Tensor] | None = None,
        **options: Any,
    ) -> None:
        if isinstance(target_layers, (nn.Module, str)) or not isinstance(target_layers, Sequence) or not target_layers:
            raise CamkitTypeError("target_layers must be a list of layers, e.g. [model.layer4].")
        self.model, self.target_layers = model, list(target_layers)
        self.reshape_transform, self.options = reshape_transform, options
        self.explanation: Any = None  # the last call's camkit Explanation (predictions, probabilities, layer maps)
        self._explainers: dict[tuple[bool, bool], Explainer] = {}
        self._explainer(False, False)  # a bad layer or option fails here, as there

    def _explainer(self, aug_smooth: bool, eigen_smooth: bool) -> Explainer:
        key = (bool(aug_smooth), bool(eigen_smooth))
        if key not in self._explainers:
            options = dict(self.options, augment=key[0])
            if key[1]:
                if not issubclass(self.method, ChannelWeightedExplainer):
                    raise CamkitError(f"eigen_smooth needs a channel-weighted method; {self.method.__name__} is not.")
                options["eigen_smooth"] = True
            self._explainers[key] = self.method(
                self.model, self.target_layers, reshape=self.reshape_transform, **options
            )
        return self._explainers[key]

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """float32 maps ``(B, H, W)`` in [0, 1], camkit's."""
        result = self._explainer(aug_smooth, eigen_smooth).explain(input_tensor, camkit_target(targets))
        self.explanation = result
        return result.maps.detach().cpu().numpy().astype(np.float32)

    def forward(
        self, input_tensor: torch.Tensor, targets: Sequence[Any] | None = None, eigen_smooth: bool = False
    ) -> np.ndarray:
        return self(input_tensor, targets, eigen_smooth=eigen_smooth)

    def __enter__(self) -> PeerStyleCAM:
        return self

    def __exit__(self, *_exc: object) -> None:  # hooks live only during each call: nothing to release
        return None


def camkit_target(targets: Sequence[Any] | None) -> Any:
    """pytorch-grad-cam's ``targets`` as a camkit target: None, class indices, or one callable per image."""
    if targets is None:
        return None
    targets = list(targets)
    if targets and all(
        type(target).__name__ == "ClassifierOutputTarget" and hasattr(target, "category") for target in targets
    ):  # camkit's or pytorch-grad-cam's: the class path, exactly camkit's
        return [int(target.category) for target in targets]
    if not all(callable(target) for target in targets):
        raise CamkitTypeError(
            "targets must be a list of target objects (e.g. ClassifierOutputTarget(c)), one per image."
        )
    return targets


class GradCAM(PeerStyleCAM):
    method = explainers.GradCAM


class HiResCAM(PeerStyleCAM):
    method = explainers.HiResCAM


class GradCAMElementWise(PeerStyleCAM):
    method = explainers.GradCAMElementWise


class GradCAMPlusPlus(PeerStyleCAM):
    method = explainers.GradCAMPlusPlus


class XGradCAM(PeerStyleCAM):
    method = explainers.XGradCAM


class LayerCAM(PeerStyleCAM):
    method = explainers.LayerCAM


class EigenCAM(PeerStyleCAM):
    method = explainers.EigenCAM


class EigenGradCAM(PeerStyleCAM):
    method = explainers.EigenGradCAM


class KPCA_CAM(PeerStyleCAM):
    method = explainers.KPCACAM


class ScoreCAM(PeerStyleCAM):
    method = explainers.ScoreCAM


class AblationCAM(PeerStyleCAM):
    method = explainers.AblationCAM


__all__ = [
    "KPCA_CAM",
    "AblationCAM",
    "BinaryClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "EigenCAM",
    "EigenGradCAM",
    "FasterRCNNBoxScoreTarget",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "PeerStyleCAM",
    "ScoreCAM",
    "SemanticSegmentationTarget",
    "XGradCAM",
    "camkit_target",
    "show_cam_on_image",
]
