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


def principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM's map: positions projected on the first principal direction, ``(B, h, w)`` or ``(B, d, h, w)``.

    Each channel is centred over positions; the projection on the first right
    singular vector is the top left singular vector scaled by its singular
    value, read here from the eigendecomposition of the smaller Gram matrix
    (positions x positions, or channels x channels) in float64, which is far
    cheaper than an SVD of the (positions x channels) matrix. An SVD fixes the
    direction only up to sign, so the sign is chosen to correlate positively
    with the channel-mean activation; otherwise the map is sometimes inverted.
    """
    batch, channels = activations.shape[:2]
    positions = activations.reshape(batch, channels, -1).transpose(1, 2).double()
    centred = positions - positions.mean(dim=1, keepdim=True)
    if positions.shape[1] <= channels:
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
        projection = eigenvectors[:, :, -1] * eigenvalues[:, -1:].clamp_min(0).sqrt()
    else:
        _, eigenvectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        projection = (centred @ eigenvectors[:, :, -1:]).squeeze(2)
    channel_mean = positions.mean(dim=2)
    agreement = (projection * (channel_mean - channel_mean.mean(dim=1, keepdim=True))).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).reshape(batch, *activations.shape[2:]).to(activations.dtype)
