"""Quantiles of pairwise distances without sorting the N^2 values (CF-CAM's DBSCAN eps)."""

from __future__ import annotations

import torch

from .distances import PairwiseDistances


def pair_quantile(distances: PairwiseDistances, valid: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (linear interpolation) of each item's off-diagonal distances among valid points, ``(B,)`` float64.

    The off-diagonal list holds every pair twice; below it, in the sorted valid
    block, sit the n diagonal zeros. So position p of the sorted off-diagonal
    list is rank n + p of the block, and the quantile interpolates between two
    such ranks, which :meth:`PairwiseDistances.order_statistics` finds exactly
    without sorting the N^2 values. Items with fewer than two valid points get 0.
    """
    valid_count = valid.sum(dim=1).long()
    pairs_twice = valid_count * (valid_count - 1)
    position = q * (pairs_twice - 1).clamp_min(0).double()
    low = position.floor().long()
    fraction = position - low
    high = torch.minimum(low + 1, (pairs_twice - 1).clamp_min(0))
    ranks = valid_count[:, None] + torch.stack((low, high), dim=1)
    has_pairs = pairs_twice > 0
    result = torch.zeros(valid.shape[0], dtype=torch.float64, device=valid.device)
    if bool(has_pairs.any()):
        # Items without pairs would ask for ranks past their block: give them rank 0.
        squared = distances.order_statistics(torch.where(has_pairs[:, None], ranks, 0), valid)
        below, above = squared.clamp_min(0).sqrt().unbind(dim=1)
        result = torch.where(has_pairs, below + fraction * (above - below), result)
    return result
