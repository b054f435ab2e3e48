"""From a layer-resolution map to what the user sees: ReLU, upsample, normalise, fuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

# A map whose spread at the layer's resolution is at most this fraction of its
# largest magnitude is constant: upsampling would leave float noise (~1e-8)
# that min-max normalisation stretches into a false pattern.
FLAT_TOLERANCE = 1e-6


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear (trilinear for volumes) upsampling with half-pixel centres, ``(B, *size)``."""
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, align_corners=False).squeeze(1)


def min_max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1]; a constant map becomes zeros instead of NaN."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1)
    span = flat.amax(dim=1) - low
    shape = (-1,) + (1,) * (maps.dim() - 1)
    scaled = (maps - low.reshape(shape)) / torch.where(span > 0, span, 1.0).reshape(shape)
    return torch.where(span.reshape(shape) > 0, scaled, 0.0)


def is_flat(maps: torch.Tensor) -> torch.Tensor:
    """``(B,)`` True where a map is constant: max - min <= FLAT_TOLERANCE * max|M| (a 1x1 map always is)."""
    flat = maps.flatten(1)
    span = flat.amax(dim=1) - flat.amin(dim=1)
    return span <= FLAT_TOLERANCE * flat.abs().amax(dim=1)


def _zero_flat(maps: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.where(flat.reshape(-1, *([1] * (maps.dim() - 1))), 0.0, maps)


def normalised_at_size(layer_maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Layer maps (after ReLU) upsampled to ``size`` and min-max normalised; constant ones become zeros."""
    return _zero_flat(min_max_normalise(upsample(layer_maps, size)), is_flat(layer_maps))


def fuse(
    layer_maps: Sequence[torch.Tensor], size: tuple[int, ...], how: Literal["mean", "max", "product"]
) -> torch.Tensor:
    """Several layers' maps (after ReLU) fused at ``size`` by mean, max or product, then normalised again.

    As pytorch-grad-cam: each layer's map is normalised at its own resolution
    (constant ones become zeros), then upsampled. For the product (RefineCAM)
    each upsampled map is normalised once more, as each factor there is a
    whole single-layer map, so that a layer's peak is exactly 1.
    """
    if how == "product":
        return min_max_normalise(torch.stack([normalised_at_size(maps, size) for maps in layer_maps]).prod(0))
    stacked = torch.stack([upsample(_zero_flat(min_max_normalise(maps), is_flat(maps)), size) for maps in layer_maps])
    return min_max_normalise(stacked.mean(0) if how == "mean" else stacked.amax(0))


def fuse_layercam(layer_maps: Sequence[torch.Tensor], size: tuple[int, ...], deepest: int) -> torch.Tensor:
    """LayerCAM's fusion (eq. 9): every map but the deepest scaled to tanh(2 M / max M), then fused by max.

    The deepest map is min-max normalised as in :func:`fuse`; maps flat at
    their layer contribute zeros; the fused map is normalised again.
    """
    scaled = []
    for index, maps in enumerate(layer_maps):
        if index == deepest:
            level = min_max_normalise(maps)
        else:
            peak = maps.flatten(1).amax(dim=1).reshape(-1, *([1] * (maps.dim() - 1)))
            level = torch.tanh(2.0 * maps / torch.where(peak > 0, peak, 1.0))
        scaled.append(upsample(_zero_flat(level, is_flat(maps)), size))
    return min_max_normalise(torch.stack(scaled).amax(0))
