"""Finer-CAM: a base method explaining S_c - alpha * (the similar classes' scores, softmax-weighted)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..targets import TargetSpec, class_indices, contrastive_scores, logits_of
from .base import Explainer
from .gradcam import GradCAM
from .registry import register


@register("finercam", paper="Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for Visual "
                            "Explanation, CVPR 2025 (arXiv:2501.11309)")
class FinerCAM(Explainer):
    """A gradient method on the target's logit minus alpha times its most similar rivals', as the authors' code.

    The rivals are the classes whose logits are nearest the target's, at
    ranks ``reference_ranks`` (1, 2, 3: the second to fourth nearest, the
    target itself being first); their logits are averaged with weights
    p_i / sum p_i (p the softmax, so a softmax over the rivals' logits, which
    needs no epsilon) and S = z_c - alpha * that mean. ``alpha=0`` is the
    base method. ``base`` is any gradient method's class (Grad-CAM).
    """

    def __init__(self, model: nn.Module, target_layer: LayersSpec = None, *, alpha: float = 1.0,
                 reference_ranks: tuple[int, ...] = (1, 2, 3), base: type[Explainer] = GradCAM,
                 **options: Any) -> None:
        if not (isinstance(base, type) and issubclass(base, Explainer) and base.uses_gradients):
            raise CamkitTypeError(f"base must be a gradient method's class (e.g. camkit.GradCAM), got {base!r}.")
        if (isinstance(reference_ranks, (str, bytes)) or not isinstance(reference_ranks, Sequence) or not reference_ranks
                or any(isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 for rank in reference_ranks)):
            raise CamkitError(f"reference_ranks must be a sequence of int ranks >= 1 (1: the nearest rival), "
                              f"got {reference_ranks!r}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise CamkitTypeError(f"alpha must be a finite number (1.0 subtracts the rivals' mean logit, 0 is the "
                                  f"base method), got {alpha!r}.")
        shared = {key: options.pop(key) for key in ("reshape", "fuse", "augment", "batch_size", "class_names")
                  if key in options}
        super().__init__(model, target_layer, **shared)
        # The base shares the layers, the layout and the fusion; augmentation runs around both.
        self.base = base(model, [name for name, _ in self.layers] or None, reshape=self.reshape, fuse=self.fuse,
                         **options)
        self.alpha, self.reference_ranks = float(alpha), tuple(reference_ranks)

    def capture(self, x: torch.Tensor, target: TargetSpec) -> list[Capture]:
        if callable(target) and not isinstance(target, torch.Tensor):
            raise CamkitError("Finer-CAM compares class logits; pass target=None, a class index or one per image.")
        self.base.layers = self.layers
        explained: list[torch.Tensor] = []
        captures = self.base.capture(x, lambda output: self._finer_scores(output, target, explained))
        return [replace(captured, classes=explained[0]) for captured in captures]

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return self.base.layer_map(captured)

    def combine(self, layer_maps: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        return self.base.combine(layer_maps, size)

    def _finer_scores(self, output: Any, target: TargetSpec, explained: list[torch.Tensor]) -> torch.Tensor:
        logits = logits_of(output)
        classes = class_indices(logits, target)
        explained.append(classes)
        return contrastive_scores(logits, classes, self.reference_ranks, self.alpha)
