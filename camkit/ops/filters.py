"""Smoothing filters: CF-CAM's cluster gradients (one kernel per map, batched); blurred images for baselines."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def authors_kernels(maps: torch.Tensor, sigma_spatial: float = 5.0, sigma_range: float = 0.1) -> torch.Tensor:
    """The CF-CAM authors' data-dependent kernels, one per map, ``(N, h, w)`` (or ``(N, d, h, w)``).

    A map-sized kernel: a spatial Gaussian centred at (h/2, w/2) times a
    range term exp(-(m_ij - mean(m))^2 / (2 sigma_range^2)) of the map itself,
    normalised to sum 1 (+1e-6). The half-pixel offset of the centre for odd
    sizes is theirs, kept so that results reproduce their code.
    """
    spatial = torch.exp(-_squared_offsets(maps.shape[1:], maps, centred=False) / (2 * sigma_spatial**2))
    dims = tuple(range(1, maps.dim()))
    deviation = maps - maps.mean(dim=dims, keepdim=True)
    kernels = spatial * torch.exp(-(deviation**2) / (2 * sigma_range**2))
    return kernels / (kernels.sum(dim=dims, keepdim=True) + 1e-6)


def _squared_offsets(shape: tuple[int, ...], like: torch.Tensor, centred: bool) -> torch.Tensor:
    """Squared distance of every cell to the centre: (n - 1) / 2 if ``centred`` else n / 2 (the authors')."""
    total = torch.zeros((), device=like.device, dtype=like.dtype)
    for axis, size in enumerate(shape):
        offsets = torch.arange(size, device=like.device, dtype=like.dtype) - ((size - 1) / 2 if centred else size / 2)
        view = [1] * len(shape)
        view[axis] = size
        total = total + offsets.reshape(view) ** 2
    return total


def gaussian_kernel(shape: tuple[int, ...], sigma: float, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A centred, normalised Gaussian kernel the size of the map, ``(h, w)`` or ``(d, h, w)``."""
    kernel = torch.exp(
        -_squared_offsets(shape, torch.empty(0, device=device, dtype=dtype), centred=True) / (2 * sigma**2)
    )
    return kernel / kernel.sum()


def filter_maps(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each map ``(N, h, w)`` or ``(N, d, h, w)`` cross-correlated with its kernel (or one shared kernel).

    Zero padding, output the size of the input (``padding="same"``, as in
    ``torch.nn.functional.conv2d``), all maps in one grouped convolution.
    """
    count = maps.shape[0]
    if count == 0:
        return maps
    if kernels.dim() == maps.dim() - 1:
        kernels = kernels.expand(count, *kernels.shape)
    # torch's "same": total padding k - 1, the odd one after; done by hand
    # because conv2d warns and copies for even kernels.
    padding: list[int] = []
    for size in reversed(kernels.shape[1:]):
        before = (size - 1) // 2
        padding += [before, size - 1 - before]
    padded = F.pad(maps.unsqueeze(0), padding)
    convolve = F.conv2d if maps.dim() == 3 else F.conv3d
    return convolve(padded, kernels.unsqueeze(1), groups=count).squeeze(0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of ``(B, C, *grid)`` blurred by a Gaussian of ``sigma`` cells, separably, reflecting at the edges.

    The kernel reaches 3 sigma each side, cut to the image where it is smaller (reflection needs that).
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    blurred = x
    for axis in range(2, x.dim()):
        moved = blurred.movedim(axis, -1)
        reach = min(radius, moved.shape[-1] - 1)
        if reach == 0:
            continue
        cut = kernel[radius - reach : radius + reach + 1]
        lines = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (reach, reach), mode="reflect")
        blurred = F.conv1d(lines, (cut / cut.sum()).reshape(1, 1, -1)).reshape(moved.shape).movedim(-1, axis)
    return blurred
