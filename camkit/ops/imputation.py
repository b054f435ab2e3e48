"""ROAD's noisy linear imputation (Rong et al., ICML 2022): every image, channel and mask of a call at once.

Each removed pixel becomes the weighted mean of its in-bounds neighbours
(removed ones included), the known pixels staying fixed: a sparse linear system
per image and channel. Its matrix is a weighted graph Laplacian restricted to
the removed pixels, symmetric and positive definite wherever a removed region
touches a known pixel, and the same for all channels of an image.

Two solvers. Conjugate gradients without forming the matrix, one small
convolution per iteration for all systems at once: on accelerators, and for
volumes. For images on the CPU, a sparse direct solve (scipy's SuperLU),
factorised once per mask and reused for the channels: CG needs about 2.5 x the
image side in iterations, each a pass over every pixel, which a wide GPU
absorbs but one CPU core does not (a combined ROAD score of two 224^2 images,
resnet18, one thread: 331 s by CG, 5.4 s with the factorisation, against
pytorch-grad-cam's 12.4 s; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import EllipsisType
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CamkitError


def neighbour_weights(
    spatial_dims: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The 3x3 (or 3x3x3) neighbour weights, centre 0, summing to 1.

    A neighbour offset along k axes weighs in proportion to 2^-k. In 2-D that
    is the paper's 1/6 for the four direct neighbours and 1/12 for the four
    diagonals; in 3-D the same rule gives 1/14 for the 6 face, 1/28 for the 12
    edge and 1/56 for the 8 corner neighbours of the 26-neighbourhood.
    """
    kernel = torch.zeros((3,) * spatial_dims, dtype=dtype, device=device)
    for offset in itertools.product((-1, 0, 1), repeat=spatial_dims):
        axes = sum(1 for step in offset if step)
        if axes:
            kernel[tuple(step + 1 for step in offset)] = 2.0**-axes
    return kernel / kernel.sum()


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-7,
    max_iterations: int | None = None,
    solver: Literal["auto", "direct", "cg"] = "auto",
) -> torch.Tensor:
    """:func:`linear_imputation` plus Gaussian noise of standard deviation ``noise`` on the imputed pixels.

    0.01 is the paper's value (absolute, in the units of the input); the
    noise is drawn from ``generator``.
    """
    result = linear_imputation(images, removed, tolerance=tolerance, max_iterations=max_iterations, solver=solver)
    if noise:
        draws = torch.randn(result.shape, generator=generator, device=images.device, dtype=images.dtype)
        result = result + noise * draws * removed[:, None].to(images.dtype)
    return result


def linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    tolerance: float = 1e-7,
    max_iterations: int | None = None,
    solver: Literal["auto", "direct", "cg"] = "auto",
) -> torch.Tensor:
    """``images`` ``(N, C, *S)`` with the pixels where ``removed`` ``(N, *S)`` is True imputed, ``S`` 2-D or 3-D.

    The imputed values solve the neighbour-mean equations (see
    :func:`neighbour_weights`). A removed region with no known pixel anywhere
    around it (the whole image removed) has no information: it is filled with
    0, the minimum-norm solution.

    ``solver``: 'direct' factorises each image's matrix on the CPU (scipy,
    float64, exact to rounding) and solves all its channels with it; 'cg' runs
    conjugate gradients on the images' device, in float64 except on devices
    without it (MPS, float32), ``tolerance`` being the relative residual at
    which each system stops (by default after at most 4 * the longest side +
    64 iterations); 'auto' is 'direct' for images (2-D) on the CPU, 'cg'
    otherwise.
    """
    if solver not in ("auto", "direct", "cg"):
        raise CamkitError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}.")
    # Direct only for planes: in a volume the 26-neighbourhood's factor fills in badly (a 32^3 volume at 90 %
    # removed: 18 s factorised against 0.5 s by CG).
    if solver == "direct" or (solver == "auto" and images.device.type == "cpu" and images.dim() == 4):
        return _direct_imputation(images, removed)
    spatial_dims = images.dim() - 2
    batch, channels = images.shape[:2]
    solve_dtype = torch.float32 if images.device.type == "mps" else torch.float64
    weights = neighbour_weights(spatial_dims, dtype=solve_dtype, device=images.device)[None, None]
    convolve = F.conv2d if spatial_dims == 2 else F.conv3d

    def neighbour_sum(field: torch.Tensor) -> torch.Tensor:
        return convolve(field, weights, padding=1)

    # Channels share their image's mask: fold them into the batch, one system per (image, channel).
    unknown = (
        removed[:, None].expand(batch, channels, *removed.shape[1:]).reshape(batch * channels, 1, *removed.shape[1:])
    )
    unknown = unknown.to(solve_dtype)
    values = images.reshape(batch * channels, 1, *images.shape[2:]).to(solve_dtype)
    known_values = values * (1 - unknown)
    # Zero padding: only in-bounds neighbours count, and each equation's weights are theirs alone.
    degree = neighbour_sum(torch.ones_like(unknown[:1]))

    def laplacian(field: torch.Tensor) -> torch.Tensor:
        return unknown * (degree * field - neighbour_sum(field))

    right = unknown * neighbour_sum(known_values)
    start = unknown * _pull_push(known_values, 1 - unknown)
    solution = _conjugate_gradients(
        laplacian,
        right,
        start,
        tolerance,
        max_iterations if max_iterations is not None else 4 * max(images.shape[2:]) + 64,
    )
    filled = known_values + unknown * solution
    return filled.reshape(images.shape).to(images.dtype)


def _direct_imputation(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """:func:`linear_imputation` by one sparse LU factorisation per image, in float64 on the CPU."""
    import scipy.sparse
    import scipy.sparse.linalg

    spatial_shape = tuple(removed.shape[1:])
    holes = removed.detach().cpu().numpy().astype(bool, copy=False)
    values = images.detach().cpu().to(torch.float64).numpy()
    filled = values.copy()
    offsets = [
        (offset, 2.0 ** -sum(1 for step in offset if step))
        for offset in itertools.product((-1, 0, 1), repeat=len(spatial_shape))
        if any(offset)
    ]
    in_bounds = np.pad(np.ones(spatial_shape), 1)

    def shifted(padded: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
        """``padded`` (one pixel of padding around the last axes) seen from each pixel's neighbour at ``offset``."""
        window: tuple[EllipsisType | slice, ...] = (
            ...,
            *(slice(1 + step, 1 + step + size) for step, size in zip(offset, spatial_shape)),
        )
        return padded[window]

    for index in range(len(holes)):
        hole = holes[index]
        count = int(hole.sum())
        # Nothing removed: nothing to do; everything removed: no information, the minimum-norm fill 0.
        if count == 0 or count == hole.size:
            filled[index][:, hole] = 0.0
            continue
        slot = np.full(spatial_shape, -1, dtype=np.int64)
        slot[hole] = np.arange(count)
        padded_slot = np.pad(slot, 1, constant_values=-1)
        known = np.pad(values[index] * ~hole, [(0, 0)] + [(1, 1)] * len(spatial_shape))
        degree = np.zeros(count)
        right = np.zeros((values.shape[1], count))
        rows, columns, entries = [np.arange(count)], [np.arange(count)], []
        for offset, weight in offsets:
            # Zero padding: an out-of-bounds neighbour adds to neither side of the equation.
            degree += weight * shifted(in_bounds, offset)[hole]
            right += weight * shifted(known, offset)[:, hole]
            neighbour = shifted(padded_slot, offset)[hole]
            coupled = neighbour >= 0
            rows.append(np.flatnonzero(coupled))
            columns.append(neighbour[coupled])
            entries.append(np.full(len(columns[-1]), -weight))
        matrix = scipy.sparse.csc_matrix(
            (np.concatenate([degree, *entries]), (np.concatenate(rows), np.concatenate(columns))), shape=(count, count)
        )
        # The matrix is symmetric positive definite: a symmetric fill-reducing ordering with no pivoting
        # (SuperLU's symmetric mode) has far less fill than the default column ordering.
        factor = scipy.sparse.linalg.splu(
            matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )
        filled[index][:, hole] = factor.solve(np.ascontiguousarray(right.T)).T
    return torch.from_numpy(filled).to(device=images.device, dtype=images.dtype)


def _pull_push(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A smooth fill of the unknown pixels from a pyramid of weighted means: CG's starting point.

    Conjugate gradients fix short-range errors fast and long-range ones
    slowly; this guess gets the long range about right, so far fewer
    iterations are needed. Pixels with no known value at any level stay 0.
    """
    spatial = values.shape[2:]
    if max(spatial) <= 1:
        return values
    pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    padding = [side for size in reversed(spatial) for side in (0, size % 2)]
    weight_sum = pool(F.pad(weights, padding), 2)
    value_sum = pool(F.pad(values * weights, padding), 2)
    coarse_weights = (weight_sum > 0).to(values.dtype)
    coarse = _pull_push(
        torch.where(weight_sum > 0, value_sum / torch.where(weight_sum > 0, weight_sum, 1.0), 0.0), coarse_weights
    )
    cropped: tuple[EllipsisType | slice, ...] = (..., *(slice(0, size) for size in spatial))
    upsampled = F.interpolate(
        coarse, scale_factor=2, mode="bilinear" if len(spatial) == 2 else "trilinear", align_corners=False
    )[cropped]
    return weights * values + (1 - weights) * upsampled


def _conjugate_gradients(
    operator: Callable[[torch.Tensor], torch.Tensor],
    right: torch.Tensor,
    start: torch.Tensor,
    tolerance: float,
    max_iterations: int,
) -> torch.Tensor:
    """Solve ``operator(u) = right`` for every system in the batch at once; each system has its own step sizes."""
    dims = tuple(range(1, right.dim()))
    solution = start
    residual = right - operator(start)
    direction = residual.clone()
    residual_norm = (residual * residual).sum(dim=dims, keepdim=True)
    # Relative to the right-hand side, not to the first residual: a good start must not tighten the target.
    threshold = tolerance**2 * (right * right).sum(dim=dims, keepdim=True)
    # A system stops moving once it has converged (its own step 0 from then on): its answer does not
    # depend on the others in the batch, and its residual never decays into slow denormal numbers.
    # Whether all have stopped is checked on the host every few iterations, not every one: each check is a sync.
    active = residual_norm > threshold
    direction = torch.where(active, direction, 0.0)
    for iteration in range(max_iterations):
        product = operator(direction)
        curvature = (direction * product).sum(dim=dims, keepdim=True)
        moving = active & (curvature > 0)
        step = torch.where(moving, residual_norm / torch.where(moving, curvature, 1.0), 0.0)
        solution = solution + step * direction
        residual = residual - step * product
        new_norm = (residual * residual).sum(dim=dims, keepdim=True)
        active = moving & (new_norm > threshold)
        ratio = torch.where(active, new_norm / torch.where(active, residual_norm, 1.0), 0.0)
        direction = torch.where(active, residual + ratio * direction, 0.0)
        residual_norm = new_norm
        if iteration % 8 == 7 and not bool(active.any()):
            break
    return solution
