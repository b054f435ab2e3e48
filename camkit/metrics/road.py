"""ROAD, RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022, arXiv:2202.00449): remove pixels by the map's order, impute them, score the model.

Removed pixels are filled by noisy linear imputation (each the weighted mean
of its neighbours, plus N(0, 0.01^2) noise; :mod:`camkit.ops.imputation`), so
that the removal's shape leaks no class information. Every image, channel and
percentile of a call is imputed and scored in batches on the model's device.

Percentiles follow pytorch-grad-cam: at percentile p, most-relevant-first
(MoRF) removes the pixels whose map value is at or above the map's p-th
percentile (linear interpolation, as numpy), i.e. the (100 - p) % most
relevant; least-relevant-first (LeRF) does the same with 1 - map, removing the
(100 - p) % least relevant. The paper's x axis, the removed fraction, is
therefore 100 - p. Scores are the change in the explained score (after minus
before, as pytorch-grad-cam; ``difference=False`` gives the score after
removal, as the paper's curves). MoRF: lower is better; LeRF: higher is
better; combined, (LeRF - MoRF) / 2: higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..calls import InputsSpec
from ..errors import CamkitError
from ..ops.imputation import linear_imputation
from ..targets import TargetSpec
from .checks import check_maps_input
from .faithfulness import BaselineSpec, ExplainedScore, perturbed_scores, reference_images

PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf")


def road(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    order: str = "morf",
    percentiles: Sequence[float] = PERCENTILES,
    baseline: BaselineSpec = "linear",
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = 64,
    difference: bool = True,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """``(B, P)``: the ROAD score of each image at each percentile, removing in ``order`` ('morf' or 'lerf').

    ``baseline='linear'`` is ROAD's noisy linear imputation (``noise`` the
    standard deviation, 0 for none; reproducible from ``seed``: the noise an
    image gets depends on the seed, the order, the percentile and its place
    in the batch, never on ``chunk_size``). Any other baseline of
    :func:`camkit.metrics.deletion` ('zero', 'mean', 'blur', a tensor, a
    callable) replaces the removed pixels with it instead, without noise.
    Volumes ``(B, C, D, H, W)`` with ``(B, D, H, W)`` maps impute over the
    26-neighbourhood. ``chunk_size`` copies are imputed and scored at a time.
    ``inputs``: the model's other inputs, as for :func:`camkit.metrics.deletion`.
    """
    return _road(model, x, maps, target, [order], percentiles, baseline, noise, seed, chunk_size, difference, inputs)


def road_most_relevant_first(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    percentile: float = 80,
    **options,
) -> torch.Tensor:
    """``(B,)``: the score change after removing the (100 - percentile) % most relevant pixels. Lower is better."""
    return road(model, x, maps, target, order="morf", percentiles=[percentile], **options)[:, 0]


def road_least_relevant_first(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    percentile: float = 20,
    **options,
) -> torch.Tensor:
    """``(B,)``: the score change after removing the (100 - percentile) % least relevant pixels. Higher is better."""
    return road(model, x, maps, target, order="lerf", percentiles=[percentile], **options)[:, 0]


def road_most_relevant_first_average(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    **options,
) -> torch.Tensor:
    """``(B,)``: the MoRF score averaged over ``percentiles``. Lower is better."""
    return road(model, x, maps, target, order="morf", percentiles=percentiles, **options).mean(dim=1)


def road_least_relevant_first_average(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    **options,
) -> torch.Tensor:
    """``(B,)``: the LeRF score averaged over ``percentiles``. Higher is better."""
    return road(model, x, maps, target, order="lerf", percentiles=percentiles, **options).mean(dim=1)


def road_combined(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    baseline: BaselineSpec = "linear",
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = 64,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """``(B,)``: (LeRF average - MoRF average) / 2 over ``percentiles``, both orders in one batched run. Higher is better."""
    table = _road(model, x, maps, target, list(ORDERS), percentiles, baseline, noise, seed, chunk_size, True, inputs)
    most, least = table.chunk(2, dim=1)
    return (least.mean(dim=1) - most.mean(dim=1)) / 2


def removal_masks(maps: torch.Tensor, order: str, percentiles: Sequence[float]) -> torch.Tensor:
    """``(P, B, *S)`` bool: the pixels ROAD removes at each percentile (see the module's docstring)."""
    if order not in ORDERS:
        raise CamkitError(
            f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}."
        )
    ranking = maps if order == "morf" else 1 - maps
    thresholds = percentile_thresholds(ranking.flatten(1), percentiles)  # (P, B)
    return ranking[None] >= thresholds.reshape(*thresholds.shape, *([1] * (maps.dim() - 1)))


def percentile_thresholds(values: torch.Tensor, percentiles: Sequence[float]) -> torch.Tensor:
    """``(P, B)``: each row's p-th percentiles of ``values`` ``(B, N)``, linear interpolation, computed as numpy does.

    numpy places the percentile at (N - 1) * p / 100 in float64 and
    interpolates in the values' dtype from the nearer end; doing the same
    keeps the removed pixels identical to pytorch-grad-cam's, ties included.
    """
    ordered = values.sort(dim=1).values
    count = values.shape[1]
    thresholds = []
    for percentile in percentiles:
        position = (count - 1) * (float(percentile) / 100)
        lower = min(int(position // 1), count - 1)
        upper = min(lower + 1, count - 1)
        weight = position - lower
        below, above = ordered[:, lower], ordered[:, upper]
        step = above - below
        thresholds.append(above - step * (1 - weight) if weight >= 0.5 else below + step * weight)
    return torch.stack(thresholds)


def _road(
    model, x, maps, target, orders, percentiles, baseline, noise, seed, chunk_size, difference, inputs
) -> torch.Tensor:
    check_maps_input(maps, x)
    percentiles = [float(percentile) for percentile in percentiles]
    if not percentiles or not all(0 <= percentile <= 100 for percentile in percentiles):
        raise CamkitError(f"percentiles must be one or more numbers in [0, 100], got {percentiles}.")
    if noise < 0 or chunk_size < 1:
        raise CamkitError(f"noise must be >= 0 and chunk_size >= 1, got noise={noise}, chunk_size={chunk_size}.")
    linear = isinstance(baseline, str) and baseline == "linear"
    reference = None if linear else reference_images(x, baseline)
    removed = torch.cat([removal_masks(maps, order, percentiles) for order in orders])  # (K, B, *S)
    # One noise stream per (order, percentile): an image's noise never depends on the chunking.
    keys = [
        seed * 1_000_003 + 500_000 * ORDERS.index(order) + round(percentile * 1000)
        for order in orders
        for percentile in percentiles
    ]
    score = ExplainedScore(model, x, target, inputs)
    generator = torch.Generator(device=x.device)

    def perturb(image: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        holes = removed[step, image]
        if reference is not None:  # every baseline but "linear"
            return torch.where(holes[:, None], reference[image], x[image])
        filled = linear_imputation(x[image], holes)
        if noise:
            draws = torch.empty_like(filled)
            for slot in step.unique().tolist():
                generator.manual_seed(keys[slot])
                rows = step == slot
                draws[rows] = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)[image[rows]]
            filled = filled + noise * draws * holes[:, None].to(x.dtype)
        return filled

    table = perturbed_scores(model, score, len(keys), perturb, chunk_size, x.device)
    return table - score.clean[:, None] if difference else table
