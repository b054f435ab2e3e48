"""Running means of per-image metric values over many batches, kept on the device.

An update adds each value's sum and counts to tensors on the values' device
(no host sync); NaN values (an undefined average drop, an image whose map had
NaN) are counted apart and left out of the mean. :meth:`Running.summary` is
the one place the numbers come to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..calls import InputsSpec
from ..errors import CamkitError
from ..targets import TargetSpec
from .boxes import (
    IOU_THRESHOLDS,
    BoxesSpec,
    ThresholdsSpec,
    average_precision_of,
    box_accuracy_counts,
    max_box_summary,
    pixel_score_histograms,
)
from .faithfulness import average_drop, deletion, increase_in_confidence, insertion
from .localisation import energy_pointing_game, pointing_game
from .road import (
    road_combined,
    road_least_relevant_first,
    road_least_relevant_first_average,
    road_most_relevant_first,
    road_most_relevant_first_average,
)

FAITHFULNESS: dict[str, Callable[..., torch.Tensor]] = {
    "deletion": deletion,
    "insertion": insertion,
    "average_drop": average_drop,
    "increase_in_confidence": increase_in_confidence,
    "road_most_relevant_first": road_most_relevant_first,
    "road_least_relevant_first": road_least_relevant_first,
    "road_most_relevant_first_average": road_most_relevant_first_average,
    "road_least_relevant_first_average": road_least_relevant_first_average,
    "road_combined": road_combined,
}
LOCALISATION: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pointing_game": pointing_game,
    "energy_pointing_game": energy_pointing_game,
}


class Running:
    """Accumulates named per-image values: ``update(deletion=values, ...)``, then ``summary()``; ``reset()`` clears.

    ``summary()`` gives, per name, ``mean`` (over the non-NaN values; NaN if
    there were none), ``count`` (values in the mean) and ``nan`` (values left
    out). Sums are float64 on the device of the values.
    """

    def __init__(self) -> None:
        self._totals: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def update(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise CamkitError(
                    f"Running.update takes tensors of per-image values; {name} is {type(value).__name__}."
                )
            value = value.detach().reshape(-1)
            missing = torch.isnan(value)
            total, count, nan = self._totals.get(name) or (
                torch.zeros((), dtype=torch.float64, device=value.device),
                torch.zeros((), dtype=torch.long, device=value.device),
                torch.zeros((), dtype=torch.long, device=value.device),
            )
            self._totals[name] = (
                total + torch.where(missing, 0.0, value.double()).sum(),
                count + (~missing).sum(),
                nan + missing.sum(),
            )

    def summary(self) -> dict[str, dict[str, float | int]]:
        if not self._totals:
            raise CamkitError("nothing to summarise: call update(...) with at least one batch first.")
        result: dict[str, dict[str, float | int]] = {}
        for name, (total, count, nan) in self._totals.items():
            counted = int(count)
            result[name] = {
                "mean": float(total) / counted if counted else float("nan"),
                "count": counted,
                "nan": int(nan),
            }
        return result

    def reset(self) -> None:
        self._totals = {}


class _RunningScores:
    """What both scoring accumulators share: a :class:`Running` of their per-image values."""

    running: Running

    def summary(self) -> dict[str, dict[str, float | int]]:
        return self.running.summary()

    def reset(self) -> None:
        self.running.reset()


class RunningFaithfulness(_RunningScores):
    """Faithfulness metrics of one model accumulated over batches: ``update(x, maps, target)`` per batch.

    ``metrics`` names any of :data:`FAITHFULNESS` (deletion, insertion,
    average_drop, increase_in_confidence and the ROAD variants); ``options``
    gives each its keyword arguments, e.g. ``{"deletion": {"steps": 16}}``.
    An image whose map holds a NaN scores NaN in every metric (counted, as
    torchcam discards it) and its NaNs are not fed to the model.
    """

    def __init__(
        self,
        model: nn.Module,
        metrics: Iterable[str] = ("deletion", "insertion", "average_drop", "increase_in_confidence"),
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.metrics = _known(list(metrics), FAITHFULNESS)
        self.options = {name: dict(values) for name, values in (options or {}).items()}
        _known(list(self.options), dict.fromkeys(self.metrics), what="options for")
        self.running = Running()

    def update(
        self, x: torch.Tensor, maps: torch.Tensor, target: TargetSpec = None, *, inputs: InputsSpec = None
    ) -> dict[str, torch.Tensor]:
        """Score the batch (``inputs``: the model's other inputs), add it to the totals, return its ``(B,)`` values per metric."""
        broken = _broken_maps(maps)
        maps = torch.nan_to_num(maps, nan=0.0)
        values = {
            name: torch.where(
                broken,
                torch.nan,
                FAITHFULNESS[name](self.model, x, maps, target, inputs=inputs, **self.options.get(name, {})),
            )
            for name in self.metrics
        }
        self.running.update(**values)
        return values


class RunningLocalisation(_RunningScores):
    """Pointing game and energy pointing game accumulated over batches: ``update(maps, masks)`` per batch."""

    def __init__(self, metrics: Iterable[str] = ("pointing_game", "energy_pointing_game")) -> None:
        self.metrics = _known(list(metrics), LOCALISATION)
        self.running = Running()

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        broken = _broken_maps(maps)
        maps = torch.nan_to_num(maps, nan=0.0)
        values = {name: torch.where(broken, torch.nan, LOCALISATION[name](maps, masks)) for name in self.metrics}
        self.running.update(**values)
        return values


def _broken_maps(maps: torch.Tensor) -> torch.Tensor:
    return torch.isnan(maps).flatten(1).any(dim=1)


def _known(names: list[str], table: Mapping[str, Any], what: str = "metrics") -> list[str]:
    unknown = [name for name in names if name not in table]
    if unknown or (what == "metrics" and not names):
        raise CamkitError(f"unknown {what} {unknown or names}; choose from {sorted(table)}.")
    return names


class RunningMaxBoxAccuracy:
    """MaxBoxAccV2 over many batches: ``update(maps, boxes)`` per batch, ``summary()`` equals one call on all images.

    Keeps the ``(I, T)`` counts of images whose best box reaches each IoU
    threshold at each CAM threshold (on the device) and the image count;
    options as :func:`camkit.metrics.max_box_accuracy`. :meth:`curve` gives
    the box accuracy against the CAM threshold, per IoU threshold.
    """

    counts: torch.Tensor | None  # None until the first update (set by reset)
    images: int

    def __init__(
        self,
        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
        thresholds: ThresholdsSpec = None,
        multi_contour: bool = True,
        backend: str = "auto",
    ) -> None:
        self.iou_thresholds = tuple(iou_thresholds)
        self.thresholds = thresholds
        self.multi_contour = multi_contour
        self.backend = backend
        self.reset()

    def update(self, maps: torch.Tensor, boxes: BoxesSpec) -> torch.Tensor:
        """Add a batch; returns its ``(I, T)`` counts."""
        counts = box_accuracy_counts(
            maps, boxes, self.iou_thresholds, self.thresholds, self.multi_contour, self.backend
        )
        self.counts = counts if self.counts is None else self.counts + counts
        self.images += maps.shape[0]
        return counts

    def curve(self) -> torch.Tensor:
        """``(I, T)`` box accuracy in percent at each CAM threshold (float64)."""
        if self.counts is None:
            raise CamkitError("nothing to summarise: call update(maps, boxes) with at least one batch first.")
        return self.counts.double() * 100.0 / self.images

    def summary(self) -> dict[str, float]:
        if self.counts is None:
            raise CamkitError("nothing to summarise: call update(maps, boxes) with at least one batch first.")
        return {
            key: float(value) for key, value in max_box_summary(self.counts, self.images, self.iou_thresholds).items()
        }

    def reset(self) -> None:
        self.counts = None
        self.images = 0


class RunningPixelAveragePrecision:
    """PxAP over many batches: ``update(maps, masks, ignore=None)``; ``summary()`` equals one call on all images.

    Keeps the two pixel-score histograms (object and background pixels) on the device.
    """

    histograms: tuple[torch.Tensor, torch.Tensor] | None  # None until the first update (set by reset)

    def __init__(self, thresholds: ThresholdsSpec = None) -> None:
        self.thresholds = thresholds
        self.reset()

    def update(self, maps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None = None) -> None:
        positive, negative = pixel_score_histograms(maps, masks, ignore, self.thresholds)
        if self.histograms is not None:
            positive, negative = positive + self.histograms[0], negative + self.histograms[1]
        self.histograms = (positive, negative)

    def summary(self) -> float:
        if self.histograms is None:
            raise CamkitError("nothing to summarise: call update(maps, masks) with at least one batch first.")
        return float(average_precision_of(*self.histograms))

    def reset(self) -> None:
        self.histograms = None
