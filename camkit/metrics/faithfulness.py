"""Faithfulness metrics: does removing what the map points at change the model's belief? Batched, one value per image.

Maps are ``(B, H, W)`` in [0, 1] at the input's size. Every model pass runs
inside :func:`camkit.modes.evaluation` (eval mode, each module's flag restored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CamkitError, CamkitTypeError
from ..modes import evaluation
from ..targets import TargetSpec, class_indices, logits_of
from .checks import check_baseline, check_maps_input


def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: str | torch.Tensor = "zero",
    chunk_size: int = 64,
    return_curves: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Area under the target's probability as the most salient pixels are replaced by the baseline.

    Lower is better: a faithful map removes the evidence first. The x axis is
    the fraction of pixels removed, so the area lies in [0, 1].
    """
    return _perturbation_auc(model, x, maps, target, steps, baseline, chunk_size, return_curves, delete=True)


def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 32,
    baseline: str | torch.Tensor = "blur",
    chunk_size: int = 64,
    return_curves: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Area under the target's probability as the most salient pixels are put back into the baseline.

    Higher is better. Starts from the baseline (blurred image by default, as
    in RISE) and ends at the image.
    """
    return _perturbation_auc(model, x, maps, target, steps, baseline, chunk_size, return_curves, delete=False)


def average_drop(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: TargetSpec = None) -> torch.Tensor:
    """Grad-CAM++'s average drop, in percent: 100 * max(0, Y - O) / Y.

    Y is the target's probability on the image, O on the image multiplied by
    its map (the input tensor times the map, as pytorch-grad-cam does).
    """
    clean, masked = _confidences(model, x, maps, target)
    return 100.0 * (clean - masked).clamp_min(0) / clean.clamp_min(1e-12)


def increase_in_confidence(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: TargetSpec = None) -> torch.Tensor:
    """Grad-CAM++'s increase in confidence, in percent: 100 where O > Y, else 0."""
    clean, masked = _confidences(model, x, maps, target)
    return 100.0 * (masked > clean).float()


def _perturbation_auc(model, x, maps, target, steps, baseline, chunk_size, return_curves, delete: bool):
    check_maps_input(maps, x)
    if steps < 1 or chunk_size < 1:
        raise CamkitError("steps and chunk_size must be at least 1.")
    batch, _, height, width = x.shape
    pixels = height * width
    classes = explained_classes(model, x, target)
    reference = _baseline(x, baseline)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=x.device).expand(batch, pixels))
    counts = torch.round(torch.linspace(0, pixels, steps + 1, device=x.device)).long()
    curves = torch.empty(batch, steps + 1, device=x.device)
    rows = batch * (steps + 1)  # row r is image r // (steps + 1) at step r % (steps + 1)
    with torch.no_grad(), evaluation(model):
        for start in range(0, rows, chunk_size):
            row = torch.arange(start, min(start + chunk_size, rows), device=x.device)
            image, step = row // (steps + 1), row % (steps + 1)
            salient = (rank[image] < counts[step][:, None]).reshape(-1, 1, height, width)
            first, second = (reference, x) if delete else (x, reference)
            perturbed = torch.where(salient, first[image], second[image])
            probabilities = logits_of(model(perturbed)).float().softmax(dim=1)
            curves[image, step] = probabilities.gather(1, classes[image][:, None]).squeeze(1)
    # Trapezoids over the fraction of pixels actually changed at each step:
    # the counts are rounded, so the steps are not exactly 1/steps wide.
    fractions = counts.to(curves.dtype) / pixels
    area = ((curves[:, 1:] + curves[:, :-1]) * (fractions[1:] - fractions[:-1])).sum(dim=1) / 2
    return (area, curves) if return_curves else area


def _baseline(x: torch.Tensor, baseline: str | torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        check_baseline(baseline, x)
        return baseline.to(x.device, x.dtype).expand_as(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if baseline == "blur":
        radius = max(1, min(x.shape[2:]) // 16)
        offsets = torch.arange(-2 * radius, 2 * radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * radius**2))
        kernel = kernel / kernel.sum()
        channels = x.shape[1]
        blurred = F.conv2d(F.pad(x, (2 * radius,) * 4, mode="replicate"), kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        return F.conv2d(blurred, kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    raise CamkitError(f"baseline must be 'zero', 'mean', 'blur' or a tensor, got {baseline!r}.")


def _confidences(model, x, maps, target) -> tuple[torch.Tensor, torch.Tensor]:
    check_maps_input(maps, x)
    with torch.no_grad(), evaluation(model):
        logits = logits_of(model(x)).float()
        classes = class_indices(logits, target)
        clean = logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
        masked_logits = logits_of(model(x * maps[:, None].to(x.dtype))).float()
        masked = masked_logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
    return clean, masked


def explained_classes(model: nn.Module, x: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    if callable(target) and not isinstance(target, torch.Tensor):
        raise CamkitTypeError("these metrics score class probabilities: target must be None, an int or one int per image.")
    with torch.no_grad(), evaluation(model):
        return class_indices(logits_of(model(x)), target)


