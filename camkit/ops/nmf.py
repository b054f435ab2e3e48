"""Non-negative matrix factorisation X ~ W H, batched torch on the device (Deep Feature Factorization)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# Below this many elements a CPU factorisation runs on one thread: each HALS sweep is dozens of tiny
# operations, and handing every one to a pool costs more than it does. Measured on a 2048 x 100 matrix
# (resnet50's layer4, 4 images at 160 x 160) on a shared 2-core CPU: 0.25 s of CPU on one thread, 3.4 s on
# two, the same factors (benchmarks/RESULTS.md, issue 27).
ONE_THREAD_ELEMENTS = 1 << 22


def nmf(
    matrix: torch.Tensor, components: int, *, iterations: int = 200, tolerance: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """W ``(..., M, n)`` and H ``(..., n, N)``, both >= 0, minimising ||X - W H||_F for X ``(..., M, N)`` >= 0.

    Hierarchical alternating least squares (HALS: exact coordinate descent on
    one column of W or row of H at a time, the algorithm of scikit-learn's
    ``solver="cd"``) from a deterministic NNDSVDa start (the SVD's leading
    pairs split into their positive parts, zeros filled with the mean of X).
    Stops when an iteration improves the error by less than ``tolerance``
    times the first error, checked every 10 iterations, or after
    ``iterations``. Leading dimensions are independent problems, solved together.
    """
    with _threads_for(matrix):
        return _factorised(matrix, components, iterations, tolerance)


def _factorised(
    matrix: torch.Tensor, components: int, iterations: int, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    weights, codes = _nndsvda(matrix, components)
    previous = first = None
    for step in range(iterations):
        weights = _hals_columns(weights, matrix @ codes.transpose(-1, -2), codes @ codes.transpose(-1, -2))
        gram = weights.transpose(-1, -2) @ weights
        codes = _hals_columns(codes.transpose(-1, -2), matrix.transpose(-1, -2) @ weights, gram).transpose(-1, -2)
        if step % 10 == 9:
            error = float(torch.linalg.matrix_norm(matrix - weights @ codes).sum())
            first = error if first is None else first
            if previous is not None and previous - error < tolerance * first:
                break
            previous = error
    return weights, codes


@contextlib.contextmanager
def _threads_for(matrix: torch.Tensor) -> Iterator[None]:
    """One torch thread for the block when ``matrix`` is a small CPU tensor; the caller's count restored."""
    threads = torch.get_num_threads()
    if matrix.device.type != "cpu" or matrix.numel() > ONE_THREAD_ELEMENTS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _hals_columns(factor: torch.Tensor, target: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """One sweep over the columns j of F ``(..., P, n)`` minimising ||T' - F G'||: F_j += (T_j - F G_j) / G_jj, then >= 0."""
    factor = factor.clone()
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    inverse = torch.where(diagonal > 0, 1.0 / torch.where(diagonal > 0, diagonal, 1.0), 0.0)  # G_jj = 0: unchanged
    for j in range(factor.shape[-1]):
        column = factor[..., :, j]
        step = target[..., :, j] - (factor @ gram[..., :, j : j + 1]).squeeze(-1)
        column.add_(step * inverse[..., j : j + 1]).clamp_(min=0)
    return factor


def _nndsvda(matrix: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boutsidis & Gallopoulos's NNDSVD start, zeros replaced by the mean of X (scikit-learn's ``init="nndsvda"``)."""
    left, singular, right = torch.linalg.svd(matrix, full_matrices=False)
    left, singular, right = left[..., :components], singular[..., :components], right[..., :components, :]
    u_plus, u_minus = left.clamp_min(0), (-left).clamp_min(0)
    v_plus, v_minus = right.clamp_min(0), (-right).clamp_min(0)
    norms = [
        torch.linalg.vector_norm(part, dim=dim)
        for part, dim in ((u_plus, -2), (v_plus, -1), (u_minus, -2), (v_minus, -1))
    ]
    positive = norms[0] * norms[1] >= norms[2] * norms[3]
    u = torch.where(positive.unsqueeze(-2), u_plus, u_minus)
    v = torch.where(positive.unsqueeze(-1), v_plus, v_minus)
    u_norm = torch.where(positive, norms[0], norms[2])
    v_norm = torch.where(positive, norms[1], norms[3])
    scale = (singular * u_norm * v_norm).sqrt()
    weights = u / torch.where(u_norm > 0, u_norm, 1.0).unsqueeze(-2) * scale.unsqueeze(-2)
    codes = v / torch.where(v_norm > 0, v_norm, 1.0).unsqueeze(-1) * scale.unsqueeze(-1)
    # The first singular pair is non-negative up to sign: its magnitudes.
    weights[..., :, 0] = left[..., :, 0].abs() * singular[..., 0:1].sqrt()
    codes[..., 0, :] = right[..., 0, :].abs() * singular[..., 0:1].sqrt()
    missing = components - singular.shape[-1]  # more components than the matrix's rank: start them at the mean
    if missing > 0:
        weights = torch.cat((weights, weights.new_zeros(*weights.shape[:-1], missing)), dim=-1)
        codes = torch.cat((codes, codes.new_zeros(*codes.shape[:-2], missing, codes.shape[-1])), dim=-2)
    mean = matrix.mean(dim=(-2, -1), keepdim=True)
    return torch.where(weights > 0, weights, mean), torch.where(codes > 0, codes, mean)


__all__ = ["nmf"]
