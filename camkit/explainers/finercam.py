"""Finer-CAM: a base method explaining S_c - alpha * (the similar classes' scores, softmax-weighted)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..targets import TargetSpec, class_indices, contrastive_scores, logits_of
from .base import Explainer
from .gradcam import GradCAM
from .registry import register


@register(
    "finercam",
    paper="Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for Visual "
    "Explanation, CVPR 2025 (arXiv:2501.11309)",
)
class FinerCAM(Explainer):
    """A gradient method on the target's logit minus alpha times its most similar rivals', as the authors' code.

    The rivals are the classes whose logits are nearest the target's, at
    ranks ``reference_ranks`` (1, 2, 3: the second to fourth nearest, the
    target itself being first); their logits are averaged with weights
    p_i / sum p_i (p the softmax, so a softmax over the rivals' logits, which
    needs no epsilon) and S = z_c - alpha * that mean. ``alpha=0`` is the
    base method. ``base`` is any gradient method's class (Grad-CAM).

    ``comparison_classes`` names the rivals instead (torchcam's
    ``comparison_idx``): one class or a list of classes for every image, or
    one equally long list per image; none may be the explained class.
    ``weighting="mean"`` averages the rivals' logits with equal weights
    (torchcam's rule; with ``alpha=0.6``, torchcam's default, the map equals
    torchcam's) instead of the authors' softmax weights.
    """

    needs_class_logits = True  # rivals are other classes' logits: a detection's score has none

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        alpha: float = 1.0,
        reference_ranks: tuple[int, ...] = (1, 2, 3),
        base: type[Explainer] = GradCAM,
        comparison_classes: int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
        weighting: Literal["softmax", "mean"] = "softmax",
        **options: Any,
    ) -> None:
        if not (isinstance(base, type) and issubclass(base, Explainer) and base.uses_gradients):
            raise CamkitTypeError(f"base must be a gradient method's class (e.g. camkit.GradCAM), got {base!r}.")
        if (
            isinstance(reference_ranks, (str, bytes))
            or not isinstance(reference_ranks, Sequence)
            or not reference_ranks
            or any(isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 for rank in reference_ranks)
        ):
            raise CamkitError(
                f"reference_ranks must be a sequence of int ranks >= 1 (1: the nearest rival), got {reference_ranks!r}."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise CamkitTypeError(
                f"alpha must be a finite number (1.0 subtracts the rivals' mean logit, 0 is the "
                f"base method), got {alpha!r}."
            )
        if weighting not in ("softmax", "mean"):
            raise CamkitError(f"weighting must be 'softmax' (the authors') or 'mean' (torchcam's), got {weighting!r}.")
        self.comparison_classes = None if comparison_classes is None else _class_rows(comparison_classes)
        self.weighting = weighting
        shared = {
            key: options.pop(key)
            for key in ("reshape", "fuse", "augment", "batch_size", "class_names")
            if key in options
        }
        super().__init__(model, target_layer, **shared)
        # The base shares the layers, the layout and the fusion; augmentation runs around both.
        self.base = base(
            model, [name for name, _ in self.layers] or None, reshape=self.reshape, fuse=self.fuse, **options
        )
        self.alpha, self.reference_ranks = float(alpha), tuple(reference_ranks)

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        if callable(target) and not isinstance(target, torch.Tensor):
            raise CamkitError("Finer-CAM compares class logits; pass target=None, a class index or one per image.")
        self.base.layers = self.layers
        explained: list[torch.Tensor] = []
        captures = self.base.capture(call, lambda output: self._finer_scores(output, target, explained))
        return [replace(captured, classes=explained[0]) for captured in captures]

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return self.base.layer_map(captured)

    def layer_map_and_weights(self, captured: Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.base.layer_map_and_weights(captured)

    @property
    def weighs_channels(self) -> bool:
        return self.base.weighs_channels

    def combine(self, layer_maps: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        return self.base.combine(layer_maps, size)

    def _finer_scores(self, output: Any, target: TargetSpec, explained: list[torch.Tensor]) -> torch.Tensor:
        logits = logits_of(output)
        classes = class_indices(logits, target)
        explained.append(classes)
        rivals = None if self.comparison_classes is None else self._rivals(self.comparison_classes, logits, classes)
        return contrastive_scores(
            logits, classes, self.reference_ranks, self.alpha, rivals=rivals, weighting=self.weighting
        )

    def _rivals(self, comparison: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The explicit comparison classes as ``(B, n)`` indices, checked against the logits and the targets."""
        rows = comparison.to(logits.device)
        batch, num_classes = logits.shape
        if rows.shape[0] not in (1, batch):
            raise CamkitError(
                f"comparison_classes has {rows.shape[0]} rows for a batch of {batch} images; give "
                "one list for all images or one per image."
            )
        rows = rows.expand(batch, -1)
        if bool(((rows < 0) | (rows >= num_classes)).any()):
            raise CamkitError(f"comparison_classes must be class indices in 0..{num_classes - 1}.")
        if bool((rows == classes[:, None]).any()):
            raise CamkitError(
                "comparison_classes holds the explained class of an image; compare it with other classes."
            )
        return rows


def _class_rows(classes: Any) -> torch.Tensor:
    """``(1, n)`` or ``(B, n)`` int64 rows of comparison classes from an int, a list, nested lists or a tensor."""
    try:
        rows = torch.as_tensor(classes)
    except (TypeError, ValueError) as error:
        raise CamkitTypeError(
            "comparison_classes must be an int, a list of ints, or one equally long list of ints per image."
        ) from error
    if rows.dtype.is_floating_point or rows.dtype == torch.bool or rows.dim() > 2 or rows.numel() == 0:
        raise CamkitTypeError(
            f"comparison_classes must be integer class indices, one list or one per image; got {classes!r}."
        )
    rows = rows.to(torch.long)
    return rows.reshape(1, -1) if rows.dim() < 2 else rows
