"""Argument checks shared by the metrics: one-line CamkitErrors before any model pass."""

from __future__ import annotations

import torch

from ..errors import CamkitError, CamkitTypeError


def check_maps_masks(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.dim() not in (3, 4):
        raise CamkitError(f"maps must have shape (B, H, W), or (B, D, H, W) for volumes, got {tuple(maps.shape)}.")
    if masks.shape != maps.shape:
        raise CamkitError(f"masks must match the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        raise CamkitTypeError(f"masks must be bool, got {masks.dtype}; use masks > 0 or boxes_to_masks(boxes, H, W).")


def check_maps_input(maps: torch.Tensor, x: torch.Tensor) -> None:
    if x.dim() not in (4, 5):
        raise CamkitError(f"x must have shape (B, C, H, W), or (B, C, D, H, W) for volumes, got {tuple(x.shape)}.")
    if maps.shape != (x.shape[0], *x.shape[2:]):
        layout = "(B, H, W)" if x.dim() == 4 else "(B, D, H, W)"
        raise CamkitError(
            f"maps must have shape {layout} = {(x.shape[0], *x.shape[2:])} to match x, got {tuple(maps.shape)}."
        )


def check_baseline(baseline: torch.Tensor, x: torch.Tensor) -> None:
    """A tensor baseline must broadcast to x: (C, H, W), (1, C, H, W) or (B, C, H, W) (1s allowed anywhere; volumes alike)."""
    try:
        shape = torch.broadcast_shapes(baseline.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise CamkitError(
            f"baseline of shape {tuple(baseline.shape)} does not fit the images {tuple(x.shape)}; give one that "
            f"broadcasts to them, e.g. {tuple(x.shape[1:])} or {tuple(x.shape)}, or 'zero', 'mean' or 'blur'."
        )
