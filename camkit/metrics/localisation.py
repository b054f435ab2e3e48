"""Localisation metrics: does the map land on the object? One value per image, batched on the device."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CamkitError
from .checks import check_maps_masks
from .complexity import _magnitudes, prepare_attributions


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


# Quantus 0.6's localisation family (same defaults: each map divided by its maximum magnitude; see
# camkit.metrics.complexity). Masks are (B, H, W) bool; an image with an empty mask scores NaN, as in Quantus.


def relevance_mass_accuracy(
    maps: torch.Tensor, masks: torch.Tensor, *, absolute: bool = False, normalise: bool = True
) -> torch.Tensor:
    """The share of the map's sum inside the mask (Arras et al. 2022), Quantus' ``RelevanceMassAccuracy``."""
    values, inside = _attributions_and_masks(maps, masks, absolute, normalise)
    mass = (values * inside).sum(dim=1) / values.sum(dim=1)
    return _empty_masks_nan(mass, inside)


def relevance_rank_accuracy(
    maps: torch.Tensor, masks: torch.Tensor, *, absolute: bool = False, normalise: bool = True
) -> torch.Tensor:
    """The share of the mask among the K highest pixels, K the mask's size (Arras et al. 2022).

    Quantus' ``RelevanceRankAccuracy``; equal pixel values are ranked in
    row-major order (Quantus' numpy sort leaves ties in an unspecified order).
    """
    check_maps_masks(maps, masks)  # the ranking needs only the order, which the preprocessing keeps
    inside = masks.flatten(1)
    size = inside.sum(dim=1)
    hits = (highest(_magnitudes(maps, absolute), size) & inside).sum(dim=1).double()
    return _empty_masks_nan(hits / size.clamp_min(1), inside)


def attribution_localisation(
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    weighted: bool = False,
    positive_attributions: bool = False,
    absolute: bool = True,
    normalise: bool = True,
) -> torch.Tensor:
    """The map's mass inside the mask over its total (Kohlbrenner et al. 2020), Quantus' ``AttributionLocalisation``.

    NaN for an empty mask or a ratio above 1 (a map with negative mass
    outside). ``weighted`` multiplies by the mask's share of the image (Quantus
    0.6 divides by the size of ``x_batch[2:]``, the batch from its third image
    on, a slip; camkit uses the image's pixel count).
    """
    values, inside = _attributions_and_masks(maps, masks, absolute, normalise)
    if positive_attributions:
        values = values.clamp_min(0)
    ratio = (values * inside).sum(dim=1) / (values.sum(dim=1) + 1e-9)
    ratio = torch.where(ratio > 1, torch.nan, ratio)
    if weighted:
        ratio = ratio * inside.sum(dim=1) / inside.shape[1]
    return _empty_masks_nan(ratio, inside)


def top_k_intersection(
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    k: int = 1000,
    concept_influence: bool = False,
    absolute: bool = False,
    normalise: bool = True,
) -> torch.Tensor:
    """The share of the k highest pixels inside the mask (Theiner et al. 2021), Quantus' ``TopKIntersection``.

    Ties ranked in row-major order; ``concept_influence`` divides by the mask's share of the image.
    """
    if k < 1:
        raise CamkitError(f"k must be at least 1, got {k}.")
    _, inside = _attributions_and_masks(maps, masks, absolute, normalise)
    count = min(k, inside.shape[1])
    share = (highest(_magnitudes(maps, absolute), count) & inside).sum(dim=1).double() / count
    if concept_influence:
        share = share * inside.shape[1] / inside.sum(dim=1)
    return _empty_masks_nan(share, inside)


def _attributions_and_masks(
    maps: torch.Tensor, masks: torch.Tensor, absolute: bool, normalise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    check_maps_masks(maps, masks)
    return prepare_attributions(maps, absolute, normalise), masks.flatten(1)


def _empty_masks_nan(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    return torch.where(inside.any(dim=1), values, torch.nan)


def highest(values: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """``(B, N)`` bool: each row's ``count`` largest values, equal values taken in row-major order (a stable ranking).

    Found from the count-th largest value (a partial sort) rather than a full
    stable sort: everything above it, then as many of its equals as fit.
    """
    width = values.shape[1]
    counts = torch.as_tensor(count, device=values.device).expand(values.shape[0]).clamp(0, width)
    largest = int(counts.max()) if counts.numel() else 0
    if largest == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    cut = _count_largest(values, counts, largest)
    above = values > cut
    level = values == cut
    room = counts[:, None] - above.sum(dim=1, keepdim=True)
    chosen = above | (level & (level.cumsum(dim=1) <= room))
    return chosen & (counts[:, None] > 0)


def _count_largest(values: torch.Tensor, counts: torch.Tensor, largest: int) -> torch.Tensor:
    """``(B, 1)``: each row's ``counts``-th largest value (any value where the count is 0).

    On the CPU numpy's selection (``np.partition``, linear time) per row;
    elsewhere one ``topk`` of the largest count for the whole batch.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        rows = values.detach().numpy()
        width = rows.shape[1]
        picked = [
            np.partition(row, width - count)[width - count] if count > 0 else row[0]
            for row, count in zip(rows, counts.tolist())
        ]
        return torch.from_numpy(np.asarray(picked, dtype=rows.dtype))[:, None]
    top = values.topk(largest, dim=1, sorted=True).values
    return top.gather(1, (counts - 1).clamp_min(0)[:, None])
