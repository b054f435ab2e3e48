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

Neighbourhoods come from :class:`camkit.ops.distances.PairwiseDistances`:
one float32 matrix product, with the few pairs whose float32 value is too
close to eps to decide recomputed exactly in float64. Connected components
come from min-label propagation with pointer jumping, each round one masked
reduction over the (B, N, N) neighbour matrix.
"""

from __future__ import annotations

import torch

from ..errors import CamkitError, CamkitTypeError
from .distances import PairwiseDistances, row_counts

# Per chunk of batch items, B_chunk * N * N float32 distances: 2**26 is 256 MB.
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
    distances: torch.Tensor | PairwiseDistances | None = None,
    valid: torch.Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Cluster labels ``(B, N)`` int64 (``(N,)`` for ``(N, D)`` points), -1 for noise.

    Args:
        points: ``(B, N, D)`` or ``(N, D)`` floating-point points.
        eps: neighbourhood radius, a float or one per batch item ``(B,)``.
        min_samples: neighbourhood size (the point included) that makes a core
            point, an int or one per batch item ``(B,)``.
        distances: precomputed distances: a :class:`PairwiseDistances` of the
            points (e.g. the one that chose eps), or a ``(B, N, N)`` tensor
            of distances, compared with eps as they are.
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
        raise CamkitError(
            f"valid must be a bool tensor of shape {(batch, count)}, got {tuple(valid.shape)} {valid.dtype}."
        )
    if distances is not None and tuple(distances.shape) != (batch, count, count):
        raise CamkitError(f"distances must have shape {(batch, count, count)}, got {tuple(distances.shape)}.")

    labels = torch.full((batch, count), -1, dtype=torch.long, device=device)
    if count == 0 or batch == 0:
        return labels.squeeze(0) if squeeze else labels
    step = max(1, chunk_elements // max(1, count * count))
    for start in range(0, batch, step):
        chunk = slice(start, min(start + step, batch))
        if isinstance(distances, torch.Tensor):
            within = distances[chunk] <= eps_per_item[chunk].to(distances.dtype)[:, None, None]
            within &= within.transpose(1, 2).clone()  # a precomputed matrix need not be bitwise symmetric
        else:
            exact = (
                distances if distances is not None and step >= batch else PairwiseDistances(points[chunk], valid[chunk])
            )
            within = exact.within(eps_per_item[chunk])
        labels[chunk] = _cluster(within, samples_per_item[chunk], valid[chunk])
    return labels.squeeze(0) if squeeze else labels


# Above this many provisional roots per item, the root graph costs more than propagation rounds.
MAX_ROOTS = 256


def _cluster(neighbours: torch.Tensor, min_samples: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Labels from the symmetric eps-neighbour relation ``(B, N, N)`` (the diagonal included)."""
    batch, count, _ = neighbours.shape
    device = neighbours.device
    if not bool(valid.all()):
        neighbours = neighbours & valid[:, :, None] & valid[:, None, :]
    core = valid & (row_counts(neighbours) >= min_samples[:, None])
    # Rows: every point; columns: its core neighbours only.
    core_neighbours = neighbours & core[:, None, :]

    label_dtype = torch.int16 if count < 2**15 - 1 else torch.int32
    sentinel = count  # larger than any index: "no core label"
    index = torch.arange(count, device=device, dtype=label_dtype).expand(batch, count)
    # A core point's lowest-index core neighbour is its first True column
    # (argmax returns the first maximum); following those links to their end
    # (pointer jumping) puts every core point under a provisional root, the
    # lowest index of its group, in one pass over the matrix.
    first = core_neighbours.view(torch.uint8).argmax(dim=2).to(label_dtype)
    component = _jump(torch.where(core, first, sentinel).to(label_dtype), sentinel)
    is_root = core & (component == index)
    roots = int(is_root.sum(dim=1).max()) if count else 0
    if roots <= MAX_ROOTS:
        component = _merged_roots(neighbours, core, component, is_root, roots, sentinel)
    else:
        component = _propagated(core_neighbours, core, component, sentinel)

    # Number clusters by their lowest-index core point (the component's root).
    is_root = core & (component == index)
    cluster_of_root = torch.cumsum(is_root.long(), dim=1) - 1
    labelled = component < sentinel
    return torch.where(labelled, cluster_of_root.gather(1, component.long().clamp_max(count - 1)), -1)


def _merged_roots(
    neighbours: torch.Tensor,
    core: torch.Tensor,
    component: torch.Tensor,
    is_root: torch.Tensor,
    roots: int,
    sentinel: int,
) -> torch.Tensor:
    """Exact components when the provisional roots are few: one matrix product links points to root groups.

    ``linked[i, r]``: point i has a core neighbour in root group r. Two groups
    belong to one cluster when a core point of one is linked to the other, a
    small (roots x roots) graph; a border point takes the lowest cluster root
    among the groups it is linked to. bfloat16 (float32 on a CPU without native
    bfloat16 products) holds the 0/1 entries exactly and a sum of non-negative
    terms is > 0 exactly when one of them is.
    """
    batch, count = core.shape
    if roots == 0:  # no core point: all noise
        return torch.full_like(component, sentinel)
    slot_of_root = torch.cumsum(is_root.long(), dim=1) - 1
    slot = slot_of_root.gather(1, component.long().clamp_max(count - 1))
    membership = torch.nn.functional.one_hot(torch.where(core, slot, roots), roots + 1)[..., :roots]
    dtype = _product_dtype(core.device)
    membership = membership.to(dtype)
    linked = torch.bmm(neighbours.to(dtype), membership) > 0  # (B, N, roots)
    group_links = torch.bmm(membership.transpose(1, 2), linked.to(dtype)) > 0  # (B, roots, roots)
    root_index = torch.full((batch, roots), sentinel, dtype=component.dtype, device=core.device)
    root_index[is_root.nonzero(as_tuple=True)[0], slot_of_root[is_root]] = component[is_root]
    merged = root_index
    while True:  # min-label propagation on the small root graph
        updated = torch.where(group_links, merged[:, None, :], sentinel).amin(dim=2).minimum(merged)
        if torch.equal(updated, merged):
            break
        merged = updated
    lowest_linked = torch.where(linked, merged[:, None, :], sentinel).amin(dim=2)
    return torch.where(core, merged.gather(1, slot.clamp(0, roots - 1)), lowest_linked)


def _product_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where its matrix products are native (GPUs, CPUs with AMX / AVX-512 BF16), else float32."""
    if device.type != "cpu":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else torch.float32


def _propagated(
    core_neighbours: torch.Tensor, core: torch.Tensor, component: torch.Tensor, sentinel: int
) -> torch.Tensor:
    """Exact components by min-label propagation over the full matrix (many provisional roots)."""
    while True:
        # Core rows check that they agree with every core neighbour; the same
        # reduction gives border rows their cluster.
        reached = torch.where(core_neighbours, component[:, None, :], sentinel).amin(dim=2)
        updated = torch.where(core, torch.minimum(component, reached), component)
        if torch.equal(updated, component):
            break
        component = _jump(updated, sentinel)
    # Border points join one of their core neighbours' clusters (scikit-learn
    # takes whichever expansion reaches them first; here, the lowest root).
    return torch.where(core, component, reached)


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


def _per_item(
    value: float | int | torch.Tensor, batch: int, name: str, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device).to(dtype)
    if tensor.dim() == 0:
        return tensor.expand(batch)
    if tensor.shape != (batch,):
        raise CamkitError(
            f"{name} must be a number or one value per batch item ({batch}), got shape {tuple(tensor.shape)}."
        )
    return tensor
