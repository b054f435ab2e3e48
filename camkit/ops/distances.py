"""Pairwise distances that are fast (one float32 matrix product) yet exact at every decision taken from them.

DBSCAN and its eps quantile only ever ask two things of the (B, N, N)
distances: is d_ij <= r, and which value has rank k. The Gram formula
||x||^2 + ||y||^2 - 2 x.y answers both in one matrix product, but in float32
near-duplicate points come out ~1e-3 of their norm apart, enough to flip a
decision. :class:`PairwiseDistances` keeps the float32 squared distances of
the centred points together with a rigorous bound on their rounding error per
row, and recomputes in float64, by direct differences, only the few entries
whose decision that bound leaves open. Every answer therefore equals the one
float64 direct differences give, at the cost of float32 passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Pairs recomputed in float64 at a time: bounds the (pairs, D) difference buffer.
EXACT_CHUNK_PAIRS = 2**16
# Entries per item sampled to bracket an order statistic (5 sigma is ~1 % of the ranks either side).
SAMPLE_SIZE = 2**16


@dataclass
class _Bracket:
    """One pass of :meth:`PairwiseDistances.order_statistics`: what lies below [low, high] and what inside."""

    low: torch.Tensor  # (B,) float32
    high: torch.Tensor  # (B,) float32
    below: torch.Tensor  # (B, N, N) bool: float32 value < low
    item: torch.Tensor  # the entries with low <= value <= high: item index,
    position: torch.Tensor  # flat position in the item's N x N matrix,
    values: torch.Tensor  # and float32 value


class PairwiseDistances:
    """Squared Euclidean distances of ``(B, N, D)`` points, float32, with a per-row error bound.

    ``squared[b, i, j]`` differs from the exact squared distance by at most
    ``bound[b, i]``; the diagonal is exactly 0. The bound is the standard
    worst case of the length-(D + 2) product that forms it (see __init__),
    doubled for safety.
    """

    def __init__(self, points: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        _batch, count, dims = points.shape
        self.points = points
        wide = points.double()
        if valid is None:
            centre = wide.mean(dim=1, keepdim=True)
        else:
            weights = valid.to(wide.dtype)[..., None]
            centre = (wide * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1)
        # Distances do not change under translation; centring shrinks the norms
        # the rounding error is proportional to (post-ReLU channels sit far from 0).
        work_dtype = torch.float64 if _matmul_is_reduced(points) else torch.float32
        centred = (wide - centre).to(work_dtype)
        norms = (centred * centred).sum(dim=2)
        # ||x||^2 + ||y||^2 - 2 x.y as one product of length D + 2 ([x, |x|^2, 1] . [-2y, 1, |y|^2]):
        # the matrix is written once, with no elementwise pass over it.
        ones = torch.ones_like(norms)[..., None]
        left = torch.cat((centred, norms[..., None], ones), dim=2)
        right = torch.cat((-2 * centred, ones, norms[..., None]), dim=2)
        squared = torch.bmm(left, right.transpose(1, 2))
        squared.diagonal(dim1=1, dim2=2).zero_()
        self.squared = squared.float()
        # The product's error is at most gamma_{D+2} * sum |terms| <= gamma_{D+2} * 2 (n_i + n_j); the norms
        # add gamma_D (n_i + n_j) and rounding the centred coordinates 8u (n_i + n_j); doubled for safety.
        unit = torch.finfo(work_dtype).eps / 2
        gamma = (dims + 2) * unit / (1 - (dims + 2) * unit)
        factor = 2 * (3 * gamma + 8 * unit) + (torch.finfo(torch.float32).eps if work_dtype == torch.float64 else 0.0)
        norms64 = norms.double()
        if valid is not None:
            norms64 = torch.where(valid, norms64, 0.0)  # padding takes part in no decision
        # Row bound: n_i + max_j n_j covers every entry of the row.
        largest = norms64.amax(dim=1, keepdim=True) if count else norms64.sum(dim=1, keepdim=True)
        self.bound = factor * (norms64 + largest)  # (B, N) float64
        self._bracket: _Bracket | None = None

    @property
    def shape(self) -> torch.Size:
        return self.squared.shape

    def exact_squared(self, item: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Float64 squared distances of the listed pairs by direct differences (symmetric, 0 on the diagonal)."""
        out = torch.empty(item.shape[0], dtype=torch.float64, device=self.points.device)
        for start in range(0, item.shape[0], EXACT_CHUNK_PAIRS):
            part = slice(start, start + EXACT_CHUNK_PAIRS)
            difference = self.points[item[part], row[part]].double() - self.points[item[part], col[part]].double()
            out[part] = (difference * difference).sum(dim=1)
        return out

    def within(self, radius: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)`` bool: d_ij <= radius_b, decided exactly (so also exactly symmetric).

        Entries whose float32 value the error bound leaves on both sides of
        the radius are recomputed in float64 and compared as distances, as
        DBSCAN compares them (eps is often itself the square root of one).
        When the radius lies inside the bracket of the last
        :meth:`order_statistics` call (CF-CAM's eps is such a statistic), the
        bracket's pass is reused and no further pass over N x N is made.
        """
        radius = radius.double()
        threshold = radius**2
        sure_in = _float32_down(threshold[:, None] - self.bound)  # (B, N): a row's entries at or below are in
        maybe_in = _float32_up(threshold[:, None] + self.bound)  # above: out
        bracket = self._bracket
        if bracket is not None and bool(
            ((sure_in.amin(dim=1) >= bracket.low) & (maybe_in.amax(dim=1) <= bracket.high)).all()
        ):
            neighbours = bracket.below.clone()
            row = torch.div(bracket.position, self.squared.shape[2], rounding_mode="floor")
            decided_in = bracket.values <= sure_in[bracket.item, row]
            undecided = ~decided_in & (bracket.values <= maybe_in[bracket.item, row])
            item, position = bracket.item, bracket.position
        else:
            neighbours = self.squared <= sure_in[:, :, None]
            undecided_matrix = (self.squared <= maybe_in[:, :, None]) ^ neighbours
            item_of_row, row_of_row = undecided_matrix.view(torch.uint8).amax(dim=2).nonzero(as_tuple=True)
            which, col = undecided_matrix[item_of_row, row_of_row].nonzero(as_tuple=True)
            item, row = item_of_row[which], row_of_row[which]
            position = row * self.squared.shape[2] + col
            decided_in = torch.zeros_like(item, dtype=torch.bool)
            undecided = torch.ones_like(item, dtype=torch.bool)
        flat = neighbours.view(neighbours.shape[0], -1)
        flat[item[decided_in], position[decided_in]] = True
        if bool(undecided.any()):
            item, position = item[undecided], position[undecided]
            exact = self.exact_squared(item, *_row_col(position, self.squared.shape[2])).sqrt() <= radius[item]
            flat[item[exact], position[exact]] = True
        return neighbours

    def order_statistics(self, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Exact float64 squared distances of the given ranks ``(B, R)`` among each item's valid N x N entries.

        Ranks count the whole valid block, diagonal zeros included. A fixed
        random sample brackets the ranks; one pass marks the float32 values
        below the bracket (kept for :meth:`within`) and lists those inside it
        (about 2 %); the float32 order statistics among those, widened by the
        error bound, leave a handful of entries that are recomputed exactly
        and ranked. An item whose bracket missed is redone exactly in full.
        """
        batch, count, _ = self.squared.shape
        values = self.squared
        if not bool(valid.all()):
            values = torch.where(valid[:, :, None] & valid[:, None, :], values, math.inf)
        flat = values.reshape(batch, count * count)
        # A fixed random sample: a regular stride would see only some columns of the matrix.
        generator = torch.Generator(device=flat.device).manual_seed(0)
        picks = torch.randint(
            flat.shape[1], (min(flat.shape[1], SAMPLE_SIZE),), generator=generator, device=flat.device
        )
        sample = flat[:, picks]
        sample_valid = torch.isfinite(sample).sum(dim=1)
        total = valid.sum(dim=1).long() ** 2
        margin = 5 * math.sqrt(sample.shape[1] * 0.25) + 8
        low_rank = (ranks.amin(dim=1) * sample_valid / total.clamp_min(1) - margin).floor().long()
        high_rank = (ranks.amax(dim=1) * sample_valid / total.clamp_min(1) + margin).ceil().long()
        low = torch.where(low_rank >= 0, _selected(sample, low_rank), -math.inf)
        high = torch.where(high_rank < sample_valid, _selected(sample, high_rank), torch.finfo(torch.float32).max)
        below_mask = flat < low[:, None]
        below = row_counts(below_mask.view(batch, count, count)).sum(dim=1)
        inside_bracket = (flat <= high[:, None]) ^ below_mask  # below_mask implies <= high
        item, position = inside_bracket.nonzero(as_tuple=True)
        middle_values = flat.reshape(-1).index_select(0, item * flat.shape[1] + position)  # 1-D: the fast gather
        self._bracket = _Bracket(low, high, below_mask.view(batch, count, count), item, position, middle_values)
        middle, middle_position = _padded_runs(item, middle_values, position, batch, math.inf)

        result = torch.full(ranks.shape, math.nan, dtype=torch.float64, device=flat.device)
        local = ranks - below[:, None]
        middle_count = torch.bincount(item, minlength=batch)
        hit = ((local >= 0) & (local < middle_count[:, None])).all(dim=1)
        if middle.shape[1] and bool(hit.any()):
            approximate = torch.stack(
                [_selected(middle, rank) for rank in local.clamp(0, middle.shape[1] - 1).unbind(1)], dim=1
            ).double()
            slack = 2 * self.bound.amax(dim=1, keepdim=True)
            window_low = _float32_down(approximate.amin(dim=1, keepdim=True) - slack)
            window_high = _float32_up(approximate.amax(dim=1, keepdim=True) + slack)
            in_window = (middle >= window_low) & (middle <= window_high)
            window_item, slot = in_window.nonzero(as_tuple=True)
            exact = self.exact_squared(window_item, *_row_col(middle_position[window_item, slot], count))
            window, _ = _padded_runs(window_item, exact, slot, batch, math.inf)
            window_below = below + (middle < window_low).sum(dim=1)
            window_rank = ranks - window_below[:, None]
            window_count = in_window.sum(dim=1)
            # The window must lie inside the bracket, or entries counted below it could belong to it.
            inside = (
                hit
                & (window_low[:, 0] >= low)
                & (window_high[:, 0] <= high)
                & ((window_rank >= 0) & (window_rank < window_count[:, None])).all(dim=1)
            )
            picked = window.sort(dim=1).values.gather(1, window_rank.clamp(0, max(window.shape[1] - 1, 0)))
            result = torch.where(inside[:, None], picked, result)
            hit = inside
        for missed in (~hit).nonzero().flatten().tolist():
            result[missed] = self._full_order_statistics(missed, ranks[missed], valid[missed])
        return result

    def _full_order_statistics(self, item: int, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        members = valid.nonzero().flatten()
        row, col = members.repeat_interleave(members.numel()), members.repeat(members.numel())
        every = self.exact_squared(torch.full_like(row, item), row, col)
        return every.sort().values[ranks]


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """The number of True entries in each row of a ``(B, N, M)`` bool tensor, ``(B, N)`` int64.

    Summing bools converts them to int64 first (8x the memory traffic). When
    a row's bytes can be read as int64 words, each word's 8 byte lanes are
    summed at once: a lane collects at most 255 words before it could carry
    into the next, so rows are summed in segments of 255 words and the lanes
    split apart at the end.
    """
    batch, rows, width = mask.shape
    if width % 8 or not mask.is_contiguous():
        return mask.view(torch.uint8).sum(dim=2, dtype=torch.int32 if width >= 2**15 else torch.int16).long()
    words = mask.view(torch.uint8).view(torch.int64).reshape(batch, rows, width // 8)
    segments = -(-words.shape[2] // 255)
    if segments > 1:
        words = torch.nn.functional.pad(words, (0, segments * 255 - words.shape[2]))
    lanes = words.reshape(batch, rows, segments, -1).sum(dim=3)
    shifts = torch.arange(0, 64, 8, device=mask.device)
    return ((lanes[..., None] >> shifts) & 255).sum(dim=(2, 3))


def _selected(rows: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Each row's value of rank ``rank[b]`` (0-based), by selection, not sorting: one call per distinct rank."""
    rank = rank.clamp(0, rows.shape[1] - 1)
    out = torch.empty(rows.shape[0], dtype=rows.dtype, device=rows.device)
    for value in torch.unique(rank).tolist():
        chosen = rank == value
        out[chosen] = rows[chosen].kthvalue(value + 1, dim=1).values
    return out


def _padded_runs(
    item: torch.Tensor, values: torch.Tensor, tags: torch.Tensor, batch: int, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values listed item by item (as ``nonzero`` lists them) laid out as ``(B, longest run)`` rows, padded."""
    counts = torch.bincount(item, minlength=batch)
    width = int(counts.max()) if counts.numel() else 0
    start = torch.cumsum(counts, dim=0) - counts
    slot = torch.arange(item.shape[0], device=item.device) - start[item]
    padded = torch.full((batch, width), fill, dtype=values.dtype, device=values.device)
    padded[item, slot] = values
    padded_tags = torch.zeros((batch, width), dtype=tags.dtype, device=tags.device)
    padded_tags[item, slot] = tags
    return padded, padded_tags


def _row_col(position: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.div(position, count, rounding_mode="floor"), position % count


def _matmul_is_reduced(points: torch.Tensor) -> bool:
    """Whether float32 matrix products may run in reduced precision (TF32) on this device."""
    if points.device.type != "cuda":
        return False
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def _float32_down(values: torch.Tensor) -> torch.Tensor:
    """The largest float32 at or below each float64 value."""
    rounded = values.float()
    return torch.where(
        rounded.double() > values, torch.nextafter(rounded, torch.full_like(rounded, -math.inf)), rounded
    )


def _float32_up(values: torch.Tensor) -> torch.Tensor:
    """The smallest float32 at or above each float64 value."""
    rounded = values.float()
    return torch.where(rounded.double() < values, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


__all__ = ["PairwiseDistances", "row_counts"]
