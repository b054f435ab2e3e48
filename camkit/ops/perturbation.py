"""Kernels shared by the perturbation methods (Score-CAM family, Ablation-CAM): which channels to score, in what chunks.

A perturbation method scores rows: one row is one (image, channel[, sample])
whose perturbed copy goes through the model. These helpers choose the rows,
size the chunks from a memory budget and put the row scores back as ``(B, K)``.
"""

from __future__ import annotations

import torch

from .maps import is_flat


def strongest_channels(activations: torch.Tensor, top_channels: int | None) -> torch.Tensor:
    """``(B, K)`` bool: each image's ``top_channels`` channels of largest L2 norm (all when None)."""
    batch, channels = activations.shape[:2]
    if top_channels is None or top_channels >= channels:
        return torch.ones((batch, channels), dtype=torch.bool, device=activations.device)
    norms = activations.reshape(batch, channels, -1).norm(dim=2)
    chosen = torch.zeros((batch, channels), dtype=torch.bool, device=activations.device)
    return chosen.scatter_(1, norms.topk(top_channels, dim=1).indices, True)


def varying_channels(activations: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` bool: channels that are not constant at the layer's resolution (camkit's flat rule).

    A constant channel upsamples to a constant mask (plus float noise that
    min-max normalisation would stretch into a false pattern): the Score-CAM
    authors skip it, and so does camkit, without a forward.
    """
    batch, channels = activations.shape[:2]
    return ~is_flat(activations.reshape(batch * channels, -1)).reshape(batch, channels)


def rows_of(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, channel) index pairs of the True entries of a ``(B, K)`` mask, image-major."""
    image_index, channel_index = selected.nonzero(as_tuple=True)
    return image_index, channel_index


def rows_per_chunk(memory_budget: int, bytes_per_row: int, ceiling: int | None = None) -> int:
    """How many perturbed copies fit in ``memory_budget`` bytes (at least one)."""
    rows = max(1, int(memory_budget) // max(1, int(bytes_per_row)))
    return rows if ceiling is None else max(1, min(rows, ceiling))


def scattered(
    row_scores: torch.Tensor, image_index: torch.Tensor, channel_index: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Row scores put back at their (image, channel), zeros elsewhere, ``(B, K)`` float64."""
    table = torch.zeros(shape, dtype=torch.float64, device=row_scores.device)
    return table.index_put_((image_index, channel_index), row_scores.double(), accumulate=True)


__all__ = ["rows_of", "rows_per_chunk", "scattered", "strongest_channels", "varying_channels"]
