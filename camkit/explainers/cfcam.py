"""CF-CAM, cluster filter class activation mapping (He, Pan & Yao, 2025, arXiv:2504.00060)."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import nn

from ..cluster import dbscan, pairwise_distances
from ..hooks import Capture, Reshape
from ..layers import LayerSpec
from ..ops.filters import authors_kernels, filter_maps, gaussian_kernel
from ..ops.weighting import mean_gradient_weights
from .base import ChannelWeightedCAM


class CFCAM(ChannelWeightedCAM):
    """Grad-CAM weights for strong channels, DBSCAN-clustered and filtered gradients for the rest.

    Per image: channels whose L2 norm reaches the ``importance_quantile``
    (75 %) keep w_k = mean g_k. The others are clustered by DBSCAN on their
    flattened activations (eps = the ``eps_quantile`` (25 %) of their pairwise
    distances, at least 1e-5; min_samples = max(2, floor(``min_samples_fraction``
    * count))); noise channels are dropped. A cluster's mean gradient map is
    smoothed (``filter="authors"``: the authors' map-sized bilateral-style
    kernel; ``"gaussian"``: a plain Gaussian of ``sigma`` cells, as the paper's
    text describes) and its mean becomes every member's weight. The kept
    weights go through a softmax (``weighting="softmax"``, the authors' choice)
    or are used as they are (``"linear"``).

    Measured fact: gradients at a CNN's last layer are small (~1e-2 and less),
    so their softmax is almost uniform and the map barely depends on the
    target class. On the toy CNN the tests train (tests/shapes.py, 64 images),
    maps for the true class and another class correlate 0.99999994 on average
    (never below 0.9999997); with ``weighting="linear"`` the same correlation
    is -0.04 on average, as for Grad-CAM (-0.10): linear keeps the class.
    Everything, DBSCAN included, runs batched on the activations' device.
    """

    name = "cfcam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        *,
        filter: Literal["authors", "gaussian"] = "authors",
        sigma: float = 5.0,
        weighting: Literal["softmax", "linear"] = "softmax",
        importance_quantile: float = 0.75,
        eps_quantile: float = 0.25,
        min_samples_fraction: float = 0.05,
        reshape: Reshape | None = None,
        fuse: str = "mean",
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, fuse=fuse)
        if filter not in ("authors", "gaussian"):
            raise ValueError(f"filter must be 'authors' or 'gaussian', got {filter!r}.")
        if weighting not in ("softmax", "linear"):
            raise ValueError(f"weighting must be 'softmax' or 'linear', got {weighting!r}.")
        for option, value in (("importance_quantile", importance_quantile), ("eps_quantile", eps_quantile)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{option} must lie in [0, 1], got {value!r}.")
        if not 0.0 <= min_samples_fraction <= 1.0:
            raise ValueError(f"min_samples_fraction must lie in [0, 1], got {min_samples_fraction!r}.")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}.")
        self.filter, self.sigma, self.weighting = filter, float(sigma), weighting
        self.importance_quantile, self.eps_quantile = float(importance_quantile), float(eps_quantile)
        self.min_samples_fraction = float(min_samples_fraction)

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        activations, gradients = captured.activations, captured.gradients
        batch, channels = activations.shape[:2]
        grid = activations.shape[2:]
        positions = activations[0, 0].numel()
        features = activations.reshape(batch, channels, positions)
        norms = features.norm(dim=2)
        important = norms >= torch.quantile(norms, self.importance_quantile, dim=1, keepdim=True)

        # The other channels, packed to the front in channel order, padded to the largest count.
        order = torch.argsort(important.to(torch.int8), dim=1, stable=True)
        rest_count = (~important).sum(dim=1)
        width_rest = int(rest_count.max())
        rest_index = order[:, :width_rest]
        valid = torch.arange(width_rest, device=activations.device) < rest_count[:, None]
        points = features.gather(1, rest_index[:, :, None].expand(-1, -1, positions))

        distances = pairwise_distances(points)
        eps = _pair_quantile(distances, valid, self.eps_quantile).clamp_min(1e-5)
        min_samples = torch.clamp(torch.floor(rest_count * self.min_samples_fraction), min=2).long()
        labels = dbscan(points, eps, min_samples, distances=distances, valid=valid)

        cluster_weights = self._cluster_weights(labels, gradients, rest_index, grid)
        weights = mean_gradient_weights(gradients)
        clustered = labels >= 0
        # Padding slots point at important channels: write their own values back.
        weights = weights.scatter(1, rest_index, torch.where(clustered, cluster_weights, weights.gather(1, rest_index)))
        kept = important.clone().scatter_(1, rest_index, clustered | important.gather(1, rest_index))
        if self.weighting == "softmax":
            return torch.where(kept, weights, -math.inf).softmax(dim=1)
        return torch.where(kept, weights, 0.0)

    def _cluster_weights(
        self, labels: torch.Tensor, gradients: torch.Tensor, rest_index: torch.Tensor, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Each clustered channel's weight: the mean of its cluster's filtered mean gradient, ``(B, N)``."""
        batch = labels.shape[0]
        clusters = int(labels.max()) + 1 if labels.numel() else 0
        if clusters == 0:
            return torch.zeros_like(labels, dtype=gradients.dtype)
        membership = torch.nn.functional.one_hot(labels.clamp_min(-1) + 1, clusters + 1)[..., 1:].to(gradients.dtype)
        positions = gradients[0, 0].numel()
        point_gradients = gradients.reshape(batch, gradients.shape[1], positions).gather(
            1, rest_index[:, :, None].expand(-1, -1, positions)
        )
        sizes = membership.sum(dim=1)  # (B, C)
        mean_gradients = torch.einsum("bnc,bnp->bcp", membership, point_gradients) / sizes.clamp_min(1)[..., None]
        mean_gradients = mean_gradients.reshape(batch * clusters, *grid)
        if self.filter == "authors":
            kernels = authors_kernels(mean_gradients)
        else:
            kernels = gaussian_kernel(tuple(grid), self.sigma, device=gradients.device, dtype=gradients.dtype)
        per_cluster = filter_maps(mean_gradients, kernels).reshape(batch, clusters, -1).mean(dim=2)
        return per_cluster.gather(1, labels.clamp_min(0))


def _pair_quantile(distances: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
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
