"""LayerCAM: map = ReLU(sum_k ReLU(g_k) * A_k); several layers fused by max after tanh(2 M / max M)."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.maps import fuse_layercam, normalised_at_size
from .base import ElementWiseExplainer
from .registry import register


@register(
    "layercam",
    paper="Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for "
    "Localization, IEEE TIP 2021 (doi:10.1109/TIP.2021.3089943)",
)
class LayerCAM(ElementWiseExplainer):
    """Activations weighted by their positive gradients at every position; layers fused as the paper.

    With several target layers, every map but the deepest's (the coarsest
    grid; the last listed among equals) is scaled to tanh(2 M / max M)
    (eq. 9), which lifts the weak but sharp responses of shallow layers, and
    the maps are fused by their maximum (``fuse`` is ignored: the paper fixes it).
    """

    def contributions(self, captured: Capture) -> torch.Tensor:
        return captured.required_gradients().clamp_min(0) * captured.activations

    def combine(self, layer_maps: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        if len(layer_maps) == 1:
            return normalised_at_size(layer_maps[0], size)
        positions = [maps[0].numel() for maps in layer_maps]
        deepest = max(index for index, count in enumerate(positions) if count == min(positions))
        return fuse_layercam(layer_maps, size, deepest)
