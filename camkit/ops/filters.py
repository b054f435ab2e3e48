"""Smoothing filters for CF-CAM's cluster gradients, one kernel per map, batched."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def authors_kernels(maps: torch.Tensor, sigma_spatial: float = 5.0, sigma_range: float = 0.1) -> torch.Tensor:
    """The CF-CAM authors' data-dependent kernels, one per map, ``(N, h, w)``.

    A map-sized kernel: a spatial Gaussian centred at (h/2, w/2) times a
    range term exp(-(m_ij - mean(m))^2 / (2 sigma_range^2)) of the map itself,
    normalised to sum 1 (+1e-6). The half-pixel offset of the centre for odd
    sizes is theirs, kept so that results reproduce their code.
    """
    _, height, width = maps.shape
    rows = torch.arange(height, device=maps.device, dtype=maps.dtype) - height / 2
    cols = torch.arange(width, device=maps.device, dtype=maps.dtype) - width / 2
    spatial = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma_spatial**2))
    deviation = maps - maps.mean(dim=(1, 2), keepdim=True)
    kernels = spatial * torch.exp(-(deviation**2) / (2 * sigma_range**2))
    return kernels / (kernels.sum(dim=(1, 2), keepdim=True) + 1e-6)


def gaussian_kernel(height: int, width: int, sigma: float, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A centred, normalised Gaussian kernel the size of the map, ``(h, w)``."""
    rows = torch.arange(height, device=device, dtype=dtype) - (height - 1) / 2
    cols = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
    kernel = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


def filter_maps(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each map ``(N, h, w)`` cross-correlated with its kernel (or one shared ``(h, w)`` kernel).

    Zero padding, output the size of the input (``padding="same"``, as in
    ``torch.nn.functional.conv2d``), all maps in one grouped convolution.
    """
    count = maps.shape[0]
    if count == 0:
        return maps
    if kernels.dim() == 2:
        kernels = kernels.expand(count, *kernels.shape)
    kernel_h, kernel_w = kernels.shape[-2:]
    # torch's "same": total padding k - 1, the odd one after; done by hand
    # because conv2d warns and copies for even kernels.
    top, left = (kernel_h - 1) // 2, (kernel_w - 1) // 2
    padded = F.pad(maps.unsqueeze(0), (left, kernel_w - 1 - left, top, kernel_h - 1 - top))
    return F.conv2d(padded, kernels.unsqueeze(1), groups=count).squeeze(0)
