"""DBSCAN for a batch of point sets, in torch, on the points' device.

scikit-learn's DBSCAN semantics: the eps-neighbourhood of a point counts the
point itself and every point at distance <= eps; a point is core when its
neighbourhood holds at least ``min_samples`` points; core points within eps
of each other share a cluster (connected components of the core graph); a
non-core point within eps of one or more core points joins the lowest-numbered
of their clusters (scikit-learn expands clusters in index order, so the first
expansion to reach a border point is that of the lowest-numbered cluster; it
does not pick the nearest core point); the rest is noise (-1). Clusters are
numbered in the order of their lowest-index core point, as scikit-learn
numbers them.

Connected components come from min-label propagation with pointer jumping,
each round one masked reduction over the (B, N, N) neighbour matrix.
"""
from __future__ import annotations

import torch

from ..errors import CamkitError, CamkitTypeError

# Per chunk of batch items, B_chunk * N * N float64 distances: 2**26 is 512 MB.
DEFAULT_CHUNK_ELEMENTS = 2**26


def pairwise_distances(points: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(B, N, N)`` (or ``(N, N)``), zero diagonal, in the points' precision.

    Computed in float64 because the fast Gram-matrix formula leaves
    near-duplicate float32 points ~1e-3 of their norm apart, enough to flip
    ``<= eps`` decisions; in float64 they stay within ~1e-8 of their norm.
    The result is rounded back to float32 for float32 points, which halves
    the memory every later pass over the N x N matrix reads.
    """
    squeeze = points.dim() == 2
    batched = points.unsqueeze(0) if squeeze else points
    wide = batched.double()
    distances = torch.cdist(wide, wide).to(torch.promote_types(points.dtype, torch.float32))
    distances.diagonal(dim1=1, dim2=2).zero_()
    return distances.squeeze(0) if squeeze else distances


def dbscan(
    points: torch.Tensor,
    eps: float | torch.Tensor,
    min_samples: int | torch.Tensor,
    *,
    distances: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Cluster labels ``(B, N)`` int64 (``(N,)`` for ``(N, D)`` points), -1 for noise.

    Args:
        points: ``(B, N, D)`` or ``(N, D)`` floating-point points.
        eps: neighbourhood radius, a float or one per batch item ``(B,)``.
        min_samples: neighbourhood size (the point included) that makes a core
            point, an int or one per batch item ``(B,)``.
        distances: precomputed ``(B, N, N)`` distances (e.g. reused to choose
            eps, so that eps and the neighbourhoods see the same numbers).
        valid: ``(B, N)`` bool, the points that take part; the others are
            nobody's neighbour and get -1 (lets items of different sizes share
            one padded batch).
        chunk_elements: bound on B_chunk * N * N per step, to bound memory.
    """
    points, squeeze = _checked_points(points)
    batch, count = points.shape[:2]
    device = points.device
    eps_per_item = _per_item(eps, batch, "eps", device, torch.float64)
    if bool((eps_per_item <= 0).any()) or not bool(torch.isfinite(eps_per_item).all()):
        raise CamkitError(f"eps must be positive and finite, got {eps!r}.")
    samples_per_item = _per_item(min_samples, batch, "min_samples", device, torch.long)
    if bool((samples_per_item < 1).any()):
        raise CamkitError(f"min_samples must be >= 1, got {min_samples!r}.")
    if valid is None:
        valid = torch.ones(batch, count, dtype=torch.bool, device=device)
    elif valid.shape != (batch, count) or valid.dtype != torch.bool:
        raise CamkitError(f"valid must be a bool tensor of shape {(batch, count)}, got {tuple(valid.shape)} {valid.dtype}.")
    if distances is not None and distances.shape != (batch, count, count):
        raise CamkitError(f"distances must have shape {(batch, count, count)}, got {tuple(distances.shape)}.")

    labels = torch.full((batch, count), -1, dtype=torch.long, device=device)
    if count == 0 or batch == 0:
        return labels.squeeze(0) if squeeze else labels
    step = max(1, chunk_elements // max(1, count * count))
    for start in range(0, batch, step):
        chunk = slice(start, min(start + step, batch))
        chunk_distances = distances[chunk] if distances is not None else pairwise_distances(points[chunk])
        labels[chunk] = _cluster(chunk_distances, eps_per_item[chunk], samples_per_item[chunk], valid[chunk])
    return labels.squeeze(0) if squeeze else labels


def _cluster(distances: torch.Tensor, eps: torch.Tensor, min_samples: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    batch, count, _ = distances.shape
    device = distances.device
    within = distances <= eps.to(distances.dtype)[:, None, None]
    # The Gram formula is not bitwise symmetric; the neighbour relation must be.
    neighbours = within & within.transpose(1, 2)
    if not bool(valid.all()):
        neighbours &= valid[:, :, None] & valid[:, None, :]
    core = valid & (neighbours.sum(dim=2, dtype=torch.int32) >= min_samples[:, None])
    # Rows: every point; columns: its core neighbours only.
    core_neighbours = neighbours & core[:, None, :]

    # Narrow labels: each masked reduction below moves B*N*N of them.
    label_dtype = torch.int16 if count < 2**15 - 1 else torch.int32
    sentinel = count  # larger than any index: "no core label"
    index = torch.arange(count, device=device, dtype=label_dtype).expand(batch, count)
    # First round for free: a core point's lowest-index core neighbour is its
    # first True column (argmax returns the first maximum).
    first = core_neighbours.view(torch.uint8).argmax(dim=2).to(label_dtype)
    component = torch.where(core, first, sentinel).to(label_dtype)
    while True:
        component = _jump(component, sentinel)
        # Min-label propagation: core rows check that they agree with every core
        # neighbour; the same reduction gives border rows their cluster.
        reached = torch.where(core_neighbours, component[:, None, :], sentinel).amin(dim=2)
        updated = torch.where(core, torch.minimum(component, reached), component)
        if torch.equal(updated, component):
            break
        component = updated
    # Border points join one of their core neighbours' clusters (scikit-learn
    # takes whichever expansion reaches them first; here, the lowest root).
    component = torch.where(core, component, reached)

    # Number clusters by their lowest-index core point (the component's root).
    is_root = core & (component == index)
    cluster_of_root = torch.cumsum(is_root.long(), dim=1) - 1
    labelled = component < sentinel
    return torch.where(labelled, cluster_of_root.gather(1, component.long().clamp_max(count - 1)), -1)


def _jump(component: torch.Tensor, sentinel: int) -> torch.Tensor:
    """Pointer jumping to a fixed point: every label replaced by its own label."""
    padding = torch.full((component.shape[0], 1), sentinel, device=component.device, dtype=component.dtype)
    while True:
        jumped = torch.cat((component, padding), dim=1).gather(1, component.long())
        if torch.equal(jumped, component):
            return component
        component = jumped


def _checked_points(points: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(points, torch.Tensor):
        raise CamkitTypeError(f"points must be a torch.Tensor (B, N, D) or (N, D), got {type(points).__name__}.")
    if points.dim() not in (2, 3):
        raise CamkitError(f"points must have shape (B, N, D) or (N, D), got {tuple(points.shape)}.")
    if not points.is_floating_point():
        raise CamkitTypeError(f"points must be floating point, got {points.dtype}.")
    if not bool(torch.isfinite(points).all()):
        raise CamkitError("points contain NaN or infinite values; DBSCAN needs finite coordinates.")
    return (points.unsqueeze(0), True) if points.dim() == 2 else (points, False)


def _per_item(value: float | int | torch.Tensor, batch: int, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device).to(dtype)
    if tensor.dim() == 0:
        return tensor.expand(batch)
    if tensor.shape != (batch,):
        raise CamkitError(f"{name} must be a number or one value per batch item ({batch}), got shape {tuple(tensor.shape)}.")
    return tensor
