"""Integrated Gradients (Sundararajan et al.): (x - x') times the gradient averaged along the path from x' to x."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..calls import ModelCall
from ..capture_input import forward_scores, input_gradients
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..ops.filters import gaussian_blur
from ..ops.quadrature import Rule, path_points
from ..targets import TargetSpec
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
    most ``batch_size`` images (default: 8, or the input batch when larger);
    results do not depend on it.
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
        path_points(steps, rule)  # refuses a bad rule or step count now, not at the first call
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
        alphas, weights = (points.to(device=x.device, dtype=x.dtype) for points in path_points(self.steps, self.rule))
        batch, difference = x.shape[0], x - baseline
        total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        rows, per_pass = self.steps * batch, self.images_per_pass(batch)
        if callable(path_target):  # a callable may hold one thing per image (masks, labels): whole copies per pass
            per_pass, path_target = batch * max(1, per_pass // batch), _per_copy(path_target, batch)
        shape = (-1,) + (1,) * (x.dim() - 1)
        for start in range(0, rows, per_pass):  # step-major rows: row r is step r // B of image r % B
            row = torch.arange(start, min(start + per_pass, rows), device=x.device)
            step, image = row // batch, row % batch
            points = baseline[image] + alphas[step].reshape(shape) * difference[image]
            part_target = path_target if callable(path_target) else path_target[image]
            # The path's points carry their images' other inputs (per-image ones repeated per step).
            gradients = input_gradients(self.model, call.rows(image, points), part_target).gradients
            total.index_add_(0, image, gradients * weights[step].reshape(shape).float())
        return Attribution(difference.float() * total, output, scores, classes)


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
