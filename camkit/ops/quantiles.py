"""Quantiles of pairwise distances without sorting the N^2 values (CF-CAM's DBSCAN eps)."""
from __future__ import annotations

import math
from functools import lru_cache

import torch


def pair_quantile(distances: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (linear interpolation) of each item's off-diagonal distances among valid points, ``(B,)``.

    The off-diagonal list holds every pair twice, so its sorted order is the
    upper triangle's with each value repeated: the quantile interpolates
    between two adjacent order statistics of the upper triangle. One selection
    finds the lower one and a masked minimum the next, with no sort of the
    N^2 values. Items with fewer than two valid points get 0.
    """
    batch, count, _ = distances.shape
    rows, cols, flat = _upper_triangle(count, distances.device)
    upper = distances.reshape(batch, count * count).index_select(1, flat)
    if not bool(valid.all()):
        upper = torch.where(valid[:, rows] & valid[:, cols], upper, math.inf)
    valid_count = valid.sum(dim=1)
    pairs_twice = valid_count * (valid_count - 1)  # length of the off-diagonal list
    position = q * (pairs_twice - 1).clamp_min(0).double()
    low = position.floor().long()
    fraction = (position - low).to(distances.dtype)
    below = torch.zeros(batch, dtype=distances.dtype, device=distances.device)
    above = torch.zeros_like(below)
    has_pairs = pairs_twice > 0
    for rank in torch.unique(low[has_pairs] // 2).tolist():
        # Python loop over distinct ranks: one per distinct point count, usually one.
        selected = has_pairs & (low // 2 == rank)
        values = upper[selected]
        lower = values.kthvalue(rank + 1, dim=1).values
        at_or_below = (values <= lower[:, None]).sum(dim=1, dtype=torch.int32)
        following = torch.where(values > lower[:, None], values, math.inf).amin(dim=1)
        below[selected] = lower
        above[selected] = torch.where(at_or_below > rank + 1, lower, following)
    # low even: both neighbours in the duplicated list are copies of the lower statistic
    above = torch.where(low % 2 == 0, below, above)
    return below + fraction * (above - below)


@lru_cache(maxsize=8)
def _upper_triangle(count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column and flat indices of the strict upper triangle (cached: the channel count rarely changes)."""
    rows, cols = torch.triu_indices(count, count, offset=1, device=device)
    return rows, cols, rows * count + cols
