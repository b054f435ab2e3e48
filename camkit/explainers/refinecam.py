"""RefineCAM: a base method's maps at several layers multiplied together (GradCAM++ by default)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture
from ..errors import CamkitTypeError
from ..layers import LayersSpec
from ..targets import TargetSpec
from .base import Explainer
from .gradcampp import GradCAMPlusPlus
from .registry import register


@register(
    "refinecam", paper="RefineCAM: per-layer class activation maps multiplied across layers, 2026 (arXiv:2605.14641)"
)
class RefineCAM(Explainer):
    """The base method's map at every target layer, each normalised to [0, 1], multiplied, normalised again.

    camkit's ``fuse="product"`` rule with Grad-CAM++ as its base (``base``:
    any method's class). A pixel survives only where every layer agrees, which
    denoises the sharp but noisy maps of early layers. One pass captures all
    layers (pytorch-grad-cam runs one per layer). With one layer it is the base
    method; ``fuse="mean"`` or ``"max"`` gives the base method's other fusions.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        base: type[Explainer] = GradCAMPlusPlus,
        **options: Any,
    ) -> None:
        if not (isinstance(base, type) and issubclass(base, Explainer)):
            raise CamkitTypeError(f"base must be a camkit method's class (e.g. camkit.GradCAMPlusPlus), got {base!r}.")
        shared = {key: options.pop(key) for key in ("reshape", "fuse", "augment", "batch_size") if key in options}
        super().__init__(model, target_layer, **{"fuse": "product", **shared})
        self.base = base(model, [name for name, _ in self.layers] or None, reshape=self.reshape, **options)
        self.uses_gradients, self.class_specific = self.base.uses_gradients, self.base.class_specific

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        self.base.layers = self.layers
        return self.base.capture(call, target)

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return self.base.layer_map(captured)
