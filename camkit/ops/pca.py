"""Principal-component projections of a layer's positions, batched (Eigen-CAM and its relatives)."""
from __future__ import annotations

import torch


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
