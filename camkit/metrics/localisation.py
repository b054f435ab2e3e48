"""Localisation metrics: does the map land on the object? One value per image, batched on the device."""
from __future__ import annotations

import torch

from ..errors import CamkitError
from .checks import check_maps_masks


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 4)`` boxes ``(x0, y0, x1, y1)``, x1/y1 exclusive, to ``(B, H, W)`` bool masks."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise CamkitError(f"boxes must have shape (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}.")
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1.0 where the map's maximum (the first one in row-major order) lies in the mask, else 0.0."""
    check_maps_masks(maps, masks)
    peak = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1).float()


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of the map's mass inside the mask (0 for an all-zero map)."""
    check_maps_masks(maps, masks)
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * masks).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)
