"""Faithfulness metrics: does removing what the map points at change the model's belief? Batched, one value per image.

Images are ``(B, C, H, W)`` with maps ``(B, H, W)``, or volumes
``(B, C, D, H, W)`` with maps ``(B, D, H, W)``; maps in [0, 1] at the input's
size. Every model pass runs inside :func:`camkit.modes.evaluation` (eval mode,
each module's flag restored).

``target`` is camkit's target spec. For ``None``, an int or one int per
image the score is the class's softmax probability; a callable
``f(output) -> (B,)`` gives the score itself (a segmenter's masked logit sum,
a multi-label sigmoid, ...). A callable is always called on the output of a
whole batch of the B images in their order, so each perturbed pass then holds
one step's B images (``chunk_size`` does not split it).

``inputs`` are the model's other inputs, as for an explainer (a dict of
keyword arguments or a tuple of positional ones): per-image inputs follow
their images into every perturbed pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from ..calls import InputsSpec, ModelCall
from ..errors import CamkitError, CamkitTypeError
from ..modes import evaluation
from ..progress import ProgressOption, optional_bar
from ..targets import TargetSpec, class_indices, logits_of, scores_for
from .checks import check_baseline, check_maps_input

BaselineSpec = str | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
NAMED_BASELINES = ("zero", "mean", "blur")


# The return type follows return_curves: the areas alone, or (areas, curves).
@overload
def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "zero",
    chunk_size: int = 64,
    return_curves: Literal[False] = False,
    inputs: InputsSpec = None,
) -> torch.Tensor: ...


@overload
def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "zero",
    chunk_size: int = 64,
    return_curves: Literal[True],
    inputs: InputsSpec = None,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "zero",
    chunk_size: int = 64,
    return_curves: bool = False,
    inputs: InputsSpec = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "zero",
    chunk_size: int = 64,
    return_curves: bool = False,
    inputs: InputsSpec = None,
    progress: ProgressOption = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Area under the target's score as the most salient pixels are replaced by the baseline.

    Lower is better: a faithful map removes the evidence first. The x axis is
    the fraction of pixels removed, so for probabilities the area lies in
    [0, 1]. ``baseline`` is ``'zero'``, ``'mean'`` (each image's channel
    means), ``'blur'``, a tensor that broadcasts to ``x`` or a callable
    ``f(x) -> tensor`` that does. ``progress=True`` draws a bar of the perturbed
    copies scored (copies/s, ETA) on stderr, a text stream draws it there: for
    a data set's worth of images at once.
    """
    return _perturbation_auc(
        model, x, maps, target, steps, baseline, chunk_size, return_curves, inputs, delete=True, progress=progress
    )


# The return type follows return_curves: the areas alone, or (areas, curves).
@overload
def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "blur",
    chunk_size: int = 64,
    return_curves: Literal[False] = False,
    inputs: InputsSpec = None,
) -> torch.Tensor: ...


@overload
def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "blur",
    chunk_size: int = 64,
    return_curves: Literal[True],
    inputs: InputsSpec = None,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "blur",
    chunk_size: int = 64,
    return_curves: bool = False,
    inputs: InputsSpec = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: BaselineSpec = "blur",
    chunk_size: int = 64,
    return_curves: bool = False,
    inputs: InputsSpec = None,
    progress: ProgressOption = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Area under the target's score as the most salient pixels are put back into the baseline.

    Higher is better. Starts from the baseline (blurred image by default, as
    in RISE) and ends at the image. ``baseline`` and ``progress`` as for :func:`deletion`.
    """
    return _perturbation_auc(
        model, x, maps, target, steps, baseline, chunk_size, return_curves, inputs, delete=False, progress=progress
    )


def average_drop(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    baseline: BaselineSpec = "zero",
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """Grad-CAM++'s average drop, in percent: 100 * max(0, Y - O) / Y.

    Y is the target's score on the image, O on the image multiplied by its map
    (the input tensor times the map, as pytorch-grad-cam does; with another
    ``baseline`` the image is blended into it: x * map + baseline * (1 - map)).
    The drop is undefined, NaN, where Y <= 0 (possible with a callable target
    that returns logits; a probability is positive).
    """
    clean, masked = _confidences(model, x, maps, target, baseline, inputs)
    positive = clean > 0
    return torch.where(positive, 100.0 * (clean - masked).clamp_min(0) / torch.where(positive, clean, 1.0), torch.nan)


def increase_in_confidence(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    baseline: BaselineSpec = "zero",
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """Grad-CAM++'s increase in confidence, in percent: 100 where O > Y, else 0 (Y, O as in :func:`average_drop`)."""
    clean, masked = _confidences(model, x, maps, target, baseline, inputs)
    return 100.0 * (masked > clean).float()


class ExplainedScore:
    """Reads the explained score of each image off model outputs: a class probability or the target callable's value.

    Built from one clean pass over ``x`` (with the model's ``inputs``); :meth:`of`
    scores a pass over perturbed copies whose rows are the images ``images`` of
    the batch, and :meth:`run` makes such a pass.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, target: TargetSpec, inputs: InputsSpec = None) -> None:
        self.batch = x.shape[0]
        self.target = target
        self.per_batch = callable(target) and not isinstance(target, torch.Tensor)
        self.call = ModelCall.of(model, x, inputs)
        with torch.no_grad(), evaluation(model):
            output = self.call.run(model)
        if self.per_batch:
            self.classes = None
            self.clean = scores_for(output, target, self.batch)[0].detach().float()
        else:
            _, self.classes = scores_for(output, target, self.batch)
            self.clean = self.of(output, torch.arange(self.batch, device=x.device))

    def run(self, model: nn.Module, images: torch.Tensor, perturbed: torch.Tensor) -> Any:
        """The model's output on ``perturbed`` copies of the images ``images``, with their inputs."""
        return self.call.rows(images, perturbed).run(model)

    def of(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        if self.per_batch or self.classes is None:  # a callable target (the only one without classes)
            return scores_for(output, self.target, self.batch)[0].detach().float()
        probabilities = logits_of(output).float().softmax(dim=1)
        return probabilities.gather(1, self.classes[images][:, None]).squeeze(1)


def perturbed_scores(
    model: nn.Module,
    score: ExplainedScore,
    count: int,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    chunk_size: int,
    device: torch.device,
    progress: ProgressOption = False,
    description: str = "camkit metric",
) -> torch.Tensor:
    """``(B, count)`` scores of ``perturb(images, steps)``, the perturbed copies of those (image, step) rows.

    Rows run step-major (all images of step 0, then of step 1, ...) in passes
    of ``chunk_size`` copies; for a callable target one pass per step with the
    B images in order, the batch the callable was written for.
    """
    batch = score.batch
    table = torch.empty(batch, count, device=device)
    rows = batch * count
    per_pass = batch if score.per_batch else chunk_size
    with torch.no_grad(), evaluation(model), optional_bar(progress, rows, description, unit="copy") as bar:
        for start in range(0, rows, per_pass):
            row = torch.arange(start, min(start + per_pass, rows), device=device)
            image, step = row % batch, row // batch
            table[image, step] = score.of(score.run(model, image, perturb(image, step)), image)
            bar.update(len(row))
    return table


def _perturbation_auc(
    model, x, maps, target, steps, baseline, chunk_size, return_curves, inputs, delete: bool, progress: ProgressOption
):
    check_maps_input(maps, x)
    if steps < 1 or chunk_size < 1:
        raise CamkitError("steps and chunk_size must be at least 1.")
    batch = x.shape[0]
    pixels = maps[0].numel()
    reference = reference_images(x, baseline)
    score = ExplainedScore(model, x, target, inputs)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=x.device).expand(batch, pixels))
    counts = torch.round(torch.linspace(0, pixels, steps + 1, device=x.device)).long()
    first, second = (reference, x) if delete else (x, reference)

    def perturb(image: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        salient = (rank[image] < counts[step][:, None]).reshape(-1, 1, *x.shape[2:])
        return torch.where(salient, first[image], second[image])

    description = "camkit deletion" if delete else "camkit insertion"
    curves = perturbed_scores(model, score, steps + 1, perturb, chunk_size, x.device, progress, description)
    # Trapezoids over the fraction of pixels actually changed at each step:
    # the counts are rounded, so the steps are not exactly 1/steps wide.
    fractions = counts.to(curves.dtype) / pixels
    area = ((curves[:, 1:] + curves[:, :-1]) * (fractions[1:] - fractions[:-1])).sum(dim=1) / 2
    return (area, curves) if return_curves else area


def reference_images(x: torch.Tensor, baseline: BaselineSpec) -> torch.Tensor:
    """The baseline as a tensor the shape of ``x``: named, given as a tensor, or made by a callable from ``x``."""
    if isinstance(baseline, torch.Tensor):
        check_baseline(baseline, x)
        return baseline.to(x.device, x.dtype).expand_as(x)
    if callable(baseline):
        made = baseline(x)
        if not isinstance(made, torch.Tensor):
            raise CamkitTypeError(
                f"the baseline callable returned {type(made).__name__}; it must return a tensor that broadcasts to "
                f"the images {tuple(x.shape)}."
            )
        check_baseline(made, x)
        return made.to(x.device, x.dtype).expand_as(x)
    spatial = tuple(range(2, x.dim()))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=spatial, keepdim=True).expand_as(x)
    if baseline == "blur":
        return _blurred(x)
    raise CamkitError(
        f"baseline must be 'zero', 'mean', 'blur', a tensor or a callable f(x) -> tensor, got {baseline!r}."
    )


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur, radius 1/16 of the shortest side, replicate padding; 2-D or 3-D."""
    radius = max(1, min(x.shape[2:]) // 16)
    offsets = torch.arange(-2 * radius, 2 * radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * radius**2))
    kernel = kernel / kernel.sum()
    channels, spatial_dims = x.shape[1], x.dim() - 2
    convolve = F.conv2d if spatial_dims == 2 else F.conv3d
    blurred = F.pad(x, (2 * radius,) * (2 * spatial_dims), mode="replicate")
    # Innermost axis first (W, then H, then D): each pass shortens its axis back to the input's size.
    for axis in reversed(range(spatial_dims)):
        shape = [1] * spatial_dims
        shape[axis] = kernel.numel()
        blurred = convolve(
            blurred, kernel.reshape(1, 1, *shape).repeat(channels, *([1] * (spatial_dims + 1))), groups=channels
        )
    return blurred


def _confidences(model, x, maps, target, baseline, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    check_maps_input(maps, x)
    score = ExplainedScore(model, x, target, inputs)
    weights = maps[:, None].to(x.dtype)
    masked_images = (
        x * weights
        if isinstance(baseline, str) and baseline == "zero"
        else (x * weights + reference_images(x, baseline) * (1 - weights))
    )
    with torch.no_grad(), evaluation(model):
        every = torch.arange(x.shape[0], device=x.device)
        masked = score.of(score.run(model, every, masked_images), every)
    return score.clean, masked


def explained_classes(model: nn.Module, x: torch.Tensor, target: TargetSpec, inputs: InputsSpec = None) -> torch.Tensor:
    if callable(target) and not isinstance(target, torch.Tensor):
        raise CamkitTypeError(
            "these metrics score class probabilities: target must be None, an int or one int per image."
        )
    with torch.no_grad(), evaluation(model):
        return class_indices(logits_of(ModelCall.of(model, x, inputs).run(model)), target)
