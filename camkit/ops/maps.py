"""From a layer-resolution map to what the user sees: ReLU, upsample, normalise."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def finish(layer_maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """ReLU, upsample to the input's size, min-max normalise: the public map."""
    return min_max_normalise(upsample(layer_maps.clamp_min(0), size))
