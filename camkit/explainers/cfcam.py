"""CF-CAM: Grad-CAM weights for strong channels, DBSCAN-clustered and filtered gradients for the rest."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError
from ..layers import LayersSpec
from ..ops.dbscan import dbscan
from ..ops.distances import PairwiseDistances
from ..ops.filters import authors_kernels, filter_maps, gaussian_kernel
from ..ops.quantiles import pair_quantile
from ..ops.weighting import mean_gradient_weights
from .base import ChannelWeightedExplainer
from .registry import register


@register("cfcam", paper="He, Pan & Yao, CF-CAM: Cluster Filter Class Activation Mapping, 2025 (arXiv:2504.00060)")
class CFCAM(ChannelWeightedExplainer):
    """DBSCAN channel clusters with filtered gradients; Grad-CAM weights for the strongest channels.

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

    Gradients at a CNN's last layer are small, so their softmax is nearly
    uniform and the softmax-weighted map barely depends on the target class
    (README.md gives the measurement); ``weighting="linear"`` keeps the class.
    Everything, DBSCAN included, runs batched on the activations' device.
    """

    # In effect, with the default softmax weighting (class sensitivity 1.000 in README.md); an instance
    # with weighting="linear" is class-specific.
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        filter: Literal["authors", "gaussian"] = "authors",
        sigma: float = 5.0,
        weighting: Literal["softmax", "linear"] = "softmax",
        importance_quantile: float = 0.75,
        eps_quantile: float = 0.25,
        min_samples_fraction: float = 0.05,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if filter not in ("authors", "gaussian"):
            raise CamkitError(f"filter must be 'authors' or 'gaussian', got {filter!r}.")
        if weighting not in ("softmax", "linear"):
            raise CamkitError(f"weighting must be 'softmax' or 'linear', got {weighting!r}.")
        for option, value in (("importance_quantile", importance_quantile), ("eps_quantile", eps_quantile)):
            if not 0.0 <= value <= 1.0:
                raise CamkitError(f"{option} must lie in [0, 1], got {value!r}.")
        if not 0.0 <= min_samples_fraction <= 1.0:
            raise CamkitError(f"min_samples_fraction must lie in [0, 1], got {min_samples_fraction!r}.")
        if not sigma > 0:
            raise CamkitError(f"sigma must be > 0, got {sigma!r}.")
        self.filter, self.sigma, self.weighting = filter, float(sigma), weighting
        self.class_specific = weighting == "linear"
        self.importance_quantile, self.eps_quantile = float(importance_quantile), float(eps_quantile)
        self.min_samples_fraction = float(min_samples_fraction)

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        activations, gradients = captured.activations, captured.required_gradients()
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

        distances = PairwiseDistances(points, valid)
        eps = pair_quantile(distances, valid, self.eps_quantile).clamp_min(1e-5)
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
