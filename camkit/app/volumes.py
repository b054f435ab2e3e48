"""3-D volumes in a folder run: prepared for a 3-D model, drawn as a montage of their middle slices."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..viz import overlay


def prepared(volume: torch.Tensor, channels: int | None, size: tuple[int, ...]) -> torch.Tensor:
    """``(C, D, H, W)`` voxels standardised by their own statistics (as is usual for scans), resized, ``(1, C, *size)``."""
    standardised = (volume - volume.mean()) / volume.std().clamp_min(1e-6)
    if channels and standardised.shape[0] == 1 and channels > 1:
        standardised = standardised.expand(channels, -1, -1, -1)
    return F.interpolate(standardised[None], size=size, mode="trilinear", align_corners=False)


def montage(volume: torch.Tensor, heat: torch.Tensor, alpha: float, colormap: str) -> torch.Tensor:
    """The middle axial, coronal and sagittal slices side by side, each overlaid, ``(1, 3, H', W')``."""
    shown = (volume - volume.min()) / (volume.max() - volume.min()).clamp_min(1e-12)
    depth, height, width = shown.shape
    slices = [
        (shown[depth // 2], heat[depth // 2]),
        (shown[:, height // 2], heat[:, height // 2]),
        (shown[:, :, width // 2], heat[:, :, width // 2]),
    ]
    tallest = max(image.shape[0] for image, _ in slices)
    panels = []
    for image, slice_map in slices:
        panel = overlay(image[None, None], slice_map[None], alpha=alpha, colormap=colormap)
        panels.append(F.pad(panel, (0, 2, 0, tallest - panel.shape[2])))  # 2-pixel gutter, top-aligned
    return torch.cat(panels, dim=3)
