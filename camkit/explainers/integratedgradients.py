"""Integrated Gradients (Sundararajan et al.): (x - x') times the gradient averaged along the path from x' to x."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..calls import ModelCall
from ..capture_input import EntryConv, forward_scores, path_step_gradients
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..ops.filters import gaussian_blur
from ..ops.quadrature import Rule, path_points
from ..targets import TargetSpec
from .base import PASS_IMAGES
from .pixel import Attribution, PixelExplainer
from .registry import register

Baseline = None | float | str | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@register(
    "integratedgradients",
    paper="Sundararajan et al., Axiomatic Attribution for Deep Networks, ICML 2017 (arXiv:1703.01365)",
)
class IntegratedGradients(PixelExplainer):
    """(x - x') * integral over a in [0, 1] of dS/dx at x' + a (x - x'), signed.

    ``baseline`` x': None or a number (a constant image; 0 by default, as
    captum), a tensor broadcastable to ``x``, ``"blur"`` (each image blurred
    by a Gaussian of ``blur_sigma`` pixels), or a function of ``x``.
    ``steps`` points of ``rule``: Gauss-Legendre (captum's default) or
    ``riemann_left/right/middle/trapezoid``. All steps explain the class
    chosen on ``x`` itself. The ``steps * B`` path points run as batches of at
    most ``batch_size`` images (default: as many as hold the pixels of eight
    224 x 224 images, at least 8 or the input batch); results do not depend
    on it. On the CPU the points run channels-last, and when one convolution
    alone reads the input, the steps' gradients are summed at its output and
    taken back to the pixels once (exact: the convolution is linear).
    """

    cost: ClassVar[str] = "forward + backward per step (50), batched"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        steps: int = 50,
        rule: Rule = "gausslegendre",
        baseline: Baseline = None,
        blur_sigma: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        self._path = path_points(steps, rule)  # refuses a bad rule or step count now, not at the first call
        if isinstance(baseline, str) and baseline != "blur":
            raise CamkitError(
                f"baseline must be None, a number, a tensor, 'blur' or a function of x; got {baseline!r}."
            )
        if not (baseline is None or isinstance(baseline, (int, float, str, torch.Tensor)) or callable(baseline)):
            raise CamkitTypeError(
                f"baseline must be None, a number, a tensor, 'blur' or a function of x; got {type(baseline).__name__}."
            )
        if not blur_sigma > 0:
            raise CamkitError(f"blur_sigma must be > 0 (pixels), got {blur_sigma!r}.")
        self.steps, self.rule, self.baseline, self.blur_sigma = steps, rule, baseline, float(blur_sigma)
        self._channels_last: bool | None = None  # None: not tried yet on this model

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline x' of each image, shaped like ``x``."""
        if self.baseline is None or isinstance(self.baseline, (int, float)):
            return torch.full_like(x, float(self.baseline or 0.0))
        if isinstance(self.baseline, str):
            return gaussian_blur(x, self.blur_sigma)
        baseline = self.baseline if isinstance(self.baseline, torch.Tensor) else self.baseline(x)
        if not isinstance(baseline, torch.Tensor):
            raise CamkitTypeError(f"The baseline function returned {type(baseline).__name__}, not a tensor like x.")
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise CamkitError(
                f"The baseline's shape {tuple(baseline.shape)} does not broadcast to the input's "
                f"{tuple(x.shape)}; give one image (C, H, W) or one per image."
            ) from None

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        x = call.x.detach()
        baseline = self.baseline_for(x)
        output, scores, classes = forward_scores(self.model, call.with_images(x), target)
        path_target = target if callable(target) and not isinstance(target, torch.Tensor) else classes
        if path_target is None:
            raise CamkitError(
                "The model's output has no class scores to explain; pass target=callable(output) -> (B,) scores."
            )
        alphas, weights = (points.to(device=x.device, dtype=x.dtype) for points in self._path)
        batch, difference = x.shape[0], x - baseline
        rows, per_pass = self.steps * batch, self._points_per_pass(x)
        if callable(path_target):  # a callable may hold one thing per image (masks, labels): whole copies per pass
            per_pass, path_target = batch * max(1, per_pass // batch), _per_copy(path_target, batch)
        # Per-image sums of the steps' weighted gradients: at the input, or at the output of the convolution
        # that alone reads the input when there is one (its transpose is then applied once, not per pass).
        total, entry_total = _RowSums(batch), _RowSums(batch)
        entry: EntryConv | None = None
        for start in range(0, rows, per_pass):  # step-major rows: row r is step r // B of image r % B
            row = torch.arange(start, min(start + per_pass, rows), device=x.device)
            step, image = row // batch, row % batch
            points = baseline[image] + alphas[step].reshape((-1,) + (1,) * (x.dim() - 1)) * difference[image]
            part_target = path_target if callable(path_target) else path_target[image]
            # The path's points carry their images' other inputs (per-image ones repeated per step).
            gradients, pass_entry = self._pass(call.rows(image, points), part_target)
            weighted = gradients * weights[step].reshape((-1,) + (1,) * (gradients.dim() - 1)).float()
            entry = entry or pass_entry
            if pass_entry is None:
                total.add(image, weighted)
            elif entry is not None and pass_entry.same_as(entry):
                entry_total.add(image, weighted)
            else:  # a graph that changed between passes: this pass's own transpose
                total.add(image, pass_entry.input_gradient(weighted, points))
        summed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        if total.value is not None:
            summed += total.result()
        if entry is not None and entry_total.value is not None:
            summed += entry.input_gradient(entry_total.result(), x)
        return Attribution(difference.float() * summed, output, scores, classes)

    def _points_per_pass(self, x: torch.Tensor) -> int:
        """``batch_size``, or as many path points as hold the pixels of ``PASS_IMAGES`` 224 x 224 images (the
        memory of 8 ImageNet-sized passes; larger passes use the cores better on small images), at least
        ``PASS_IMAGES`` or the input batch."""
        if self.batch_size is not None:
            return self.batch_size
        pixels = max(1, x[0, 0].numel()) if x.dim() > 2 else 224 * 224
        return max(x.shape[0], PASS_IMAGES, PASS_IMAGES * 224 * 224 // pixels)

    def _pass(self, call: ModelCall, target: TargetSpec) -> tuple[torch.Tensor, EntryConv | None]:
        """One batch of path points. On the CPU they run channels-last (oneDNN's faster layout for
        convolutions, about 10 % on resnet50); a model that cannot take that layout (a ``.view`` of a
        channels-last activation) raises, and this explainer then stays with the contiguous layout."""
        x = call.x
        if self._channels_last is not False and x.device.type == "cpu" and x.dim() == 4:
            try:
                found = path_step_gradients(
                    self.model, call.with_images(x.contiguous(memory_format=torch.channels_last)), target
                )
            except RuntimeError:
                if self._channels_last:
                    raise
                self._channels_last = False
            else:
                self._channels_last = True
                return found
        return path_step_gradients(self.model, call, target)


class _RowSums:
    """Per-image sums of a pass's rows (``index_add_``). Rows laid out channels-last are summed in that
    layout, seen as (B, H, W, C): ``index_add_`` across two layouts is about ten times slower."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.value: torch.Tensor | None = None
        self.channels_last = False

    def add(self, image: torch.Tensor, rows: torch.Tensor) -> None:
        if self.value is None:
            self.channels_last = (
                rows.dim() == 4 and not rows.is_contiguous() and rows.is_contiguous(memory_format=torch.channels_last)
            )
            size = (self.batch, *rows.shape[1:])
            shape = (size[0], size[2], size[3], size[1]) if self.channels_last else size
            self.value = torch.zeros(shape, dtype=torch.float32, device=rows.device)
        self.value.index_add_(0, image, rows.permute(0, 2, 3, 1) if self.channels_last else rows)

    def result(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("_RowSums.result() before any rows were added")
        return self.value.permute(0, 3, 1, 2) if self.channels_last else self.value


def _per_copy(target: Callable[[Any], torch.Tensor], batch: int) -> Callable[[Any], torch.Tensor]:
    """The target callable applied to each copy of the batch in a pass's output, its scores concatenated."""

    def scores(output: Any) -> torch.Tensor:
        rows = _rows_of(output)
        return torch.cat([target(_sliced(output, start, start + batch)) for start in range(0, rows, batch)])

    return scores


def _rows_of(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.shape[0]
    values = list(output.values()) if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else []
    for value in values:
        if isinstance(value, (torch.Tensor, dict, tuple, list)):
            return _rows_of(value)
    raise CamkitTypeError(
        f"Cannot split a model output of type {type(output).__name__} into images for the "
        "target callable; pass batch_size= the number of images, so each pass holds one copy."
    )


def _sliced(output: Any, start: int, stop: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output[start:stop]
    if isinstance(output, dict):
        return {key: _sliced(value, start, stop) for key, value in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(_sliced(value, start, stop) for value in output)
    return output
