"""Channel weightings shared by the explainers, batched over images and channels."""

from __future__ import annotations

import torch


def _spatial(tensor: torch.Tensor) -> tuple[int, ...]:
    # (B, K, h, w) images and (B, K, d, h, w) volumes alike: every dim after the channels.
    return tuple(range(2, tensor.dim()))


def mean_gradient_weights(gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM's weights: each channel's gradient averaged over positions, ``(B, K)``."""
    return gradients.mean(dim=_spatial(gradients))


def gradcampp_weights(
    activations: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    third: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM++ weights (eq. 19) from the gradient's first three powers, ``(B, K)``.

    ``first``, ``second`` and ``third`` are g, g^2, g^3 for Grad-CAM++ and their
    means over noisy copies for Smooth Grad-CAM++. alpha is 0 where its
    denominator is exactly 0; no epsilon is added, because one changes alpha
    wherever |g| is small (about 1e-3 and below for an epsilon of 1e-6).
    """
    activation_sums = activations.sum(dim=_spatial(activations), keepdim=True)
    denominator = 2.0 * second + activation_sums * third
    defined = denominator != 0
    alpha = torch.where(defined, second / torch.where(defined, denominator, 1.0), 0.0)
    return (alpha * first.clamp_min(0)).sum(dim=_spatial(activations))


def weighted_sum(channel_weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_k w_bk A_bk..., ``(B, h, w)`` (or ``(B, d, h, w)``)."""
    batch, channels = activations.shape[:2]
    combined = torch.einsum("bk,bkp->bp", channel_weights, activations.reshape(batch, channels, -1))
    return combined.reshape(batch, *activations.shape[2:])


def activation_normalised_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM's weights: sum_ij A g / sum_ij A per channel, 0 where sum_ij A is exactly 0, ``(B, K)``.

    No epsilon: peers add 1e-7 / 1e-8 to the denominator, which changes the
    weight of every channel whose activations sum to a small value (a ViT's
    normalised tokens sum to ~0 in many channels).
    """
    spatial = _spatial(activations)
    totals = activations.sum(dim=spatial)
    defined = totals != 0
    return torch.where(defined, (activations * gradients).sum(dim=spatial) / torch.where(defined, totals, 1.0), 0.0)
