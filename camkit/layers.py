"""Finding the target layer: by dotted name, as a module, or automatically.

The automatic choice comes from one dry-run forward pass that records every
module's output shape and layout (:mod:`camkit.layouts`).
"""
from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from .errors import CamkitError, CamkitTypeError
from .layouts import Layout, output_layout
from .modes import evaluation

logger = logging.getLogger("camkit")

LayerSpec = Union[None, str, nn.Module]
LayersSpec = Union[LayerSpec, Sequence[Union[str, nn.Module]]]

# Modules that only re-lay, re-scale or pool the last feature map for the head:
# their map is the previous layer's one, renamed (or resampled, for adaptive
# pooling), so the automatic choice skips them and names the stage itself.
_NOT_A_STAGE = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.Identity,
    nn.Flatten, nn.Unflatten, nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
)
_NOT_A_STAGE_NAMES = ("Permute", "LayerNorm2d", "FrozenBatchNorm2d")


@dataclass(frozen=True)
class LayerInfo:
    """One module seen during a dry run: where it is and what it produced."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    layout: Layout | None


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Resolve a dotted name or a module object to ``(name, module)``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name or "<model>", module
        raise CamkitError(
            f"The target layer {type(layer).__name__} is not a submodule of the model. "
            "Pass a module taken from this model, its dotted name, or None to choose automatically."
        )
    if not isinstance(layer, str):
        raise CamkitTypeError(
            f"target_layer must be a dotted module name, a module, or None; got {type(layer).__name__}."
        )
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    # Users write features[28] or features.28 interchangeably.
    normalised = layer.replace("[", ".").replace("]", "").strip(".")
    if normalised in modules and normalised != "":
        return normalised, modules[normalised]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(normalised, names, n=5, cutoff=0.5)
    if not close:
        top = [name for name in names if "." not in name]
        close = top[:8]
        hint = "its top-level modules are"
    else:
        hint = "did you mean"
    raise CamkitError(
        f"The model has no layer named {layer!r}; {hint}: {', '.join(close)}. "
        "`camkit layers MODEL` lists every candidate with its output shape."
    )


def dry_run(model: nn.Module, x: torch.Tensor) -> list[LayerInfo]:
    """Every module's output shape, in the order the modules finish."""
    seen: list[LayerInfo] = []
    names = {module: name for name, module in model.named_modules() if name}
    input_hw = tuple(x.shape[2:])

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        seen.append(LayerInfo(names[module], type(module).__name__, shape, output_layout(output, input_hw)))

    with evaluation(model):
        handles = [module.register_forward_hook(record) for module in names]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
    return seen


def auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The layer a user would pick: the last spatial map of a CNN, or a ViT's last block's first norm."""
    infos = dry_run(model, x[:1])
    modules = dict(model.named_modules())
    spatial = [
        i for i, info in enumerate(infos)
        if info.layout is not None and info.layout.spatial and _grid_area(info) > 1 and _is_stage(modules[info.name])
    ]
    token_norms = [
        i for i, info in enumerate(infos)
        if info.layout is Layout.TOKENS and isinstance(modules[info.name], nn.LayerNorm)
    ]
    last_spatial = spatial[-1] if spatial else -1
    if token_norms and token_norms[-1] > last_spatial:
        name = _vit_layer([infos[i].name for i in token_norms if i > last_spatial])
        reason = "the last transformer block's first norm"
    elif spatial:
        name = infos[last_spatial].name
        reason = "the last module whose output keeps a spatial grid"
    else:
        raise CamkitError(
            "Found no layer with a spatial output (B, C, h, w) or tokens (B, N, D) in this model, "
            "so there is nothing to map back onto the image. Pass target_layer= the module to explain."
        )
    logger.info("camkit chose target layer %r (%s).", name, reason)
    return name, modules[name]


def _is_stage(module: nn.Module) -> bool:
    return not isinstance(module, _NOT_A_STAGE) and type(module).__name__ not in _NOT_A_STAGE_NAMES


def _grid_area(info: LayerInfo) -> int:
    shape = info.shape or (0, 0, 0, 0)
    if info.layout is Layout.NHWC:
        return shape[1] * shape[2]
    return math.prod(shape[2:])


def _vit_layer(norm_names: list[str]) -> str:
    # A transformer block holds two norms (before attention, before the MLP);
    # the model's final norm stands alone. At the final norm only the class
    # token receives gradient, so explain the last block's first norm.
    by_parent: dict[str, list[str]] = {}
    for name in norm_names:
        by_parent.setdefault(name.rpartition(".")[0], []).append(name)
    blocks = [names for names in by_parent.values() if len(names) >= 2]
    return blocks[-1][0] if blocks else norm_names[-1]


def find_layers(model: nn.Module, target_layer: LayersSpec) -> list[tuple[str, nn.Module]]:
    """``target_layer`` as a list of ``(name, module)``: empty for None (choose automatically later)."""
    if target_layer is None:
        return []
    if isinstance(target_layer, (list, tuple)):
        if not target_layer:
            raise CamkitError("target_layer is an empty list; name at least one layer, or pass None.")
        return [find_layer(model, layer) for layer in target_layer]
    return [find_layer(model, target_layer)]
