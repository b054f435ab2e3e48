"""Input batches made displayable, on the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def unnormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A normalised input batch back to displayable [0, 1] images."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x * std_t + mean_t).clamp(0, 1)


def display_images(x: torch.Tensor) -> torch.Tensor:
    """Inputs of unknown normalisation made displayable: each image min-max scaled to [0, 1]."""
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    low, high = flat.amin(1).reshape(shape), flat.amax(1).reshape(shape)
    return ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
