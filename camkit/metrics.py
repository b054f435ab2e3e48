"""Faithfulness, localisation and sanity-check metrics, batched in torch on the model's device.

Every function returns one value per image, a ``(B,)`` tensor; the mean over a
data set is the caller's one-liner. Maps are ``(B, H, W)`` in [0, 1] at the
input's size, masks ``(B, H, W)`` bool.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .targets import TargetSpec, class_indices, logits_of


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 4)`` boxes ``(x0, y0, x1, y1)``, x1/y1 exclusive, to ``(B, H, W)`` bool masks."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}.")
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1.0 where the map's maximum (the first one in row-major order) lies in the mask, else 0.0."""
    _check_maps_masks(maps, masks)
    peak = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1).float()


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of the map's mass inside the mask (0 for an all-zero map)."""
    _check_maps_masks(maps, masks)
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * masks).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


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


def class_sensitivity(explainer: Callable[..., torch.Tensor], x: torch.Tensor, targets_a: TargetSpec,
                      targets_b: TargetSpec) -> torch.Tensor:
    """Pearson correlation between each image's maps for two classes.

    1 means the map ignores which class it explains (a failed sanity check,
    Adebayo et al. 2018); near 0 or negative means it is class-specific.
    """
    return pearson(explainer(x, targets_a), explainer(x, targets_b))


def model_randomisation(
    explainer_factory: Callable[[nn.Module], Callable[..., torch.Tensor]],
    model: nn.Module,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Spearman rank correlation between maps of the model and of a copy with top layers re-drawn.

    A faithful method's map should change (low correlation) when the weights it
    explains are randomised (Adebayo et al. 2018). ``layers`` names the modules
    to re-initialise; by default the classifier head after the explained layer
    and the explained layer itself. The original model is never modified.
    """
    explainer = explainer_factory(model)
    original = explainer(x, target)
    classes = _explained_classes(model, x, target)
    randomised = copy.deepcopy(model)
    names = list(layers) if layers is not None else _top_layers(randomised, getattr(explainer, "target_layer_name", None))
    modules = dict(randomised.named_modules())
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            if name not in modules:
                raise ValueError(f"model has no layer named {name!r} to randomise.")
            for module in modules[name].modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return spearman(original, explainer_factory(randomised)(x, classes))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of two map batches (0 where either map is constant)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator.clamp_min(1e-300), 0.0).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation (ties broken by position)."""
    def ranks(values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1).argsort(dim=1, stable=True).argsort(dim=1).double()

    return pearson(ranks(a), ranks(b))


def _perturbation_auc(model, x, maps, target, steps, baseline, chunk_size, return_curves, delete: bool):
    _check_maps_input(maps, x)
    if steps < 1 or chunk_size < 1:
        raise ValueError("steps and chunk_size must be at least 1.")
    batch, _, height, width = x.shape
    pixels = height * width
    classes = _explained_classes(model, x, target)
    reference = _baseline(x, baseline)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=x.device).expand(batch, pixels))
    counts = torch.round(torch.linspace(0, pixels, steps + 1, device=x.device)).long()
    curves = torch.empty(batch, steps + 1, device=x.device)
    rows = batch * (steps + 1)  # row r is image r // (steps + 1) at step r % (steps + 1)
    with torch.no_grad(), _eval(model):
        for start in range(0, rows, chunk_size):
            row = torch.arange(start, min(start + chunk_size, rows), device=x.device)
            image, step = row // (steps + 1), row % (steps + 1)
            salient = (rank[image] < counts[step][:, None]).reshape(-1, 1, height, width)
            first, second = (reference, x) if delete else (x, reference)
            perturbed = torch.where(salient, first[image], second[image])
            probabilities = logits_of(model(perturbed)).float().softmax(dim=1)
            curves[image, step] = probabilities.gather(1, classes[image][:, None]).squeeze(1)
    area = (curves[:, 1:] + curves[:, :-1]).sum(dim=1) / (2 * steps)
    return (area, curves) if return_curves else area


def _baseline(x: torch.Tensor, baseline: str | torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
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
    raise ValueError(f"baseline must be 'zero', 'mean', 'blur' or a tensor, got {baseline!r}.")


def _confidences(model, x, maps, target) -> tuple[torch.Tensor, torch.Tensor]:
    _check_maps_input(maps, x)
    with torch.no_grad(), _eval(model):
        logits = logits_of(model(x)).float()
        classes = class_indices(logits, target)
        clean = logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
        masked_logits = logits_of(model(x * maps[:, None].to(x.dtype))).float()
        masked = masked_logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
    return clean, masked


def _explained_classes(model: nn.Module, x: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    if callable(target) and not isinstance(target, torch.Tensor):
        raise TypeError("these metrics score class probabilities: target must be None, an int or one int per image.")
    with torch.no_grad(), _eval(model):
        return class_indices(logits_of(model(x)), target)


def _top_layers(model: nn.Module, target_layer: str | None) -> list[str]:
    names = [name for name, module in model.named_children() if any(True for _ in module.parameters())]
    if target_layer is None:
        return names[-1:]
    top = target_layer.split(".")[0]
    return names[names.index(top):] if top in names else names[-1:]


class _eval:
    """Evaluation mode inside, the caller's mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *_exc: Any) -> None:
        self.model.train(self.training)


def _check_maps_masks(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}.")
    if masks.shape != maps.shape:
        raise ValueError(f"masks must match the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}; use masks > 0 or boxes_to_masks(boxes, H, W).")


def _check_maps_input(maps: torch.Tensor, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}.")
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps must have shape (B, H, W) = {(x.shape[0], *x.shape[2:])} to match x, got {tuple(maps.shape)}.")
