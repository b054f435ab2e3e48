"""Principal-component projections of a layer's positions, batched (Eigen-CAM and its relatives)."""

from __future__ import annotations

from typing import Literal

import torch

# How a projection's arbitrary sign is fixed: Eigen-CAM's rule in camkit (correlate with the channel mean), or
# Seg-Eigen-CAM's eq. 13 (the larger of |max| and |min| becomes the positive side).
SignRule = Literal["channel_mean", "extreme"]


def principal_projection(activations: torch.Tensor, sign: SignRule = "channel_mean") -> torch.Tensor:
    """Eigen-CAM's map: positions projected on the first principal direction, ``(B, h, w)`` or ``(B, d, h, w)``.

    Each channel is centred over positions; the projection on the first right
    singular vector is the top left singular vector scaled by its singular
    value, read here from the eigendecomposition of the smaller Gram matrix
    (positions x positions, or channels x channels) in float64, which is far
    cheaper than an SVD of the (positions x channels) matrix. The sign is
    chosen to correlate positively with the channel-mean activation
    (``sign="extreme"``: flipped where |min| > |max|, Seg-Eigen-CAM's eq. 13).
    """
    batch, channels = activations.shape[:2]
    positions = activations.reshape(batch, channels, -1).transpose(1, 2).double()
    centred = positions - positions.mean(dim=1, keepdim=True)
    if positions.shape[1] <= channels:
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
        projection: torch.Tensor = eigenvectors[:, :, -1] * eigenvalues[:, -1:].clamp_min(0).sqrt()
    else:
        _, eigenvectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        projection = (centred @ eigenvectors[:, :, -1:]).squeeze(2)
    if sign == "extreme":
        flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
        signed = projection * torch.where(flip, -1.0, 1.0).to(projection.dtype)[:, None]
        return signed.reshape(batch, *activations.shape[2:]).to(activations.dtype)
    return _signed(projection, positions).reshape(batch, *activations.shape[2:]).to(activations.dtype)


def kernel_principal_projection(activations: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """KPCA-CAM's map: positions projected on the first kernel principal component (RBF kernel).

    K_ij = exp(-gamma ||a_i - a_j||^2) over the layer's positions (``gamma``
    None: 1 / channels, scikit-learn's default), double-centred; the
    projection is the top eigenvector times the square root of its
    eigenvalue, as ``KernelPCA.fit_transform``. One batched ``eigh`` of the
    ``(B, hw, hw)`` kernels in float64; the sign follows Eigen-CAM's rule.
    """
    batch, channels = activations.shape[:2]
    positions = activations.reshape(batch, channels, -1).transpose(1, 2).double()
    rate = 1.0 / channels if gamma is None else float(gamma)
    kernel = torch.exp(-rate * torch.cdist(positions, positions).square())
    centred = (
        kernel
        - kernel.mean(dim=1, keepdim=True)
        - kernel.mean(dim=2, keepdim=True)
        + kernel.mean(dim=(1, 2), keepdim=True)
    )
    eigenvalues, eigenvectors = torch.linalg.eigh(centred)
    projection = eigenvectors[:, :, -1] * eigenvalues[:, -1:].clamp_min(0).sqrt()
    return _signed(projection, positions).reshape(batch, *activations.shape[2:]).to(activations.dtype)


def _signed(projection: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` projections with the sign that correlates positively with the channel mean at each position.

    A decomposition fixes the direction only up to sign; otherwise the map is sometimes inverted.
    """
    channel_mean = positions.mean(dim=2)
    agreement = (projection * (channel_mean - channel_mean.mean(dim=1, keepdim=True))).sum(dim=1)
    return projection * torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)[:, None]
