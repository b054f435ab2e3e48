"""Finding the target layer: by dotted name, as a module, or automatically.

The automatic choice comes from one dry-run forward pass that records every
module's output shape and layout (:mod:`camkit.layouts`): the last module
whose output is a grid of the image, a spatial map or tokens laid on their
patch grid; for a Vision Transformer, whose class (distillation, register)
tokens ride along to the head, the last block's first norm.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .calls import ModelCall, as_call
from .errors import CamkitError, CamkitTypeError
from .layouts import Layout, output_layout, patch_size_of, prefix_tokens_of, token_layout
from .modes import evaluation

logger = logging.getLogger("camkit")

LayerSpec = str | nn.Module | None
LayersSpec = LayerSpec | Sequence[str | nn.Module]

# Modules that only re-lay, re-scale or pool the last feature map for the head:
# their map is the previous layer's one, renamed (or resampled, for adaptive
# pooling), so the automatic choice skips them and names the stage itself.
_NOT_A_STAGE = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool3d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Flatten,
    nn.Unflatten,
    nn.LayerNorm,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
)
_NOT_A_STAGE_NAMES = ("Permute", "LayerNorm2d", "FrozenBatchNorm2d")


@dataclass(frozen=True)
class LayerInfo:
    """One module seen during a dry run: where it is and what it produced."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    layout: Layout | None
    # The module that finished just before this one, when it is inside this one and this one
    # returns its very output tensor (a Sequential's last child, timm's BatchNormAct2d's act).
    same_output_as: str | None = None


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


def dry_run(model: nn.Module, x: torch.Tensor | ModelCall) -> list[LayerInfo]:
    """Every module's output shape, in the order the modules finish (``x``: images, or images with the model's inputs)."""
    seen: list[LayerInfo] = []
    names = {module: name for name, module in model.named_modules() if name}
    call = as_call(model, x)
    input_hw = tuple(call.x.shape[2:])
    previous: list[tuple[str, Any]] = []  # the last module to finish and its output: one reference, no more

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        name = names[module]
        same = None
        if previous and isinstance(tensor, torch.Tensor) and previous[0][1] is tensor:
            same = previous[0][0] if previous[0][0].startswith(name + ".") else None
        seen.append(LayerInfo(name, type(module).__name__, shape, output_layout(output, input_hw), same))
        previous[:] = [(name, tensor)]

    with evaluation(model):
        handles = [module.register_forward_hook(record) for module in names]
        try:
            with torch.no_grad():
                call.run(model)
        finally:
            for handle in handles:
                handle.remove()
            previous.clear()
    return seen


def auto_layer(model: nn.Module, x: torch.Tensor | ModelCall) -> tuple[str, nn.Module]:
    """The layer a user would pick: the last grid of the image (a CNN's last stage), or a ViT's last block's first norm.

    A grid is a spatial map or tokens laid on their patch grid (Swin, LeViT,
    hierarchical models). When the tokens that carry the prediction start
    with special tokens (class, distillation, registers), only those tokens
    receive gradient at the last block's output, so the last block's first
    norm is explained instead. The choice is logged on the ``camkit`` logger.
    """
    # Two rows: outputs that do not have one row per image (attention biases, windows, detector
    # regions) are not maps of the image, whatever their shape.
    call = as_call(model, x)
    probe = call.rows(torch.zeros(2, dtype=torch.long, device=call.x.device))
    infos = dry_run(model, probe)
    modules = dict(model.named_modules())
    input_size = tuple(int(side) for side in call.x.shape[2:])
    patch_size, prefix_tokens = patch_size_of(model), prefix_tokens_of(model)
    grids: dict[int, tuple[int, str]] = {}  # index -> (special tokens before the grid, how the grid was read)
    unlaid: list[int] = []
    calls = Counter(info.name for info in infos)
    for index, info in enumerate(infos):
        if info.layout is None or not info.shape or info.shape[0] != probe.batch:
            continue
        if calls[info.name] > 1:
            continue  # a module run several times (a shared ReLU, a head applied per pyramid level) has no one map
        if info.layout.spatial:
            if _grid_area(info) > 1:
                grids[index] = (0, "a spatial grid")
        elif info.shape[2] > 1:
            # No guessing of undeclared special tokens here: a wrong guess would pick a wrong layer silently.
            found = token_layout(info.shape[1], input_size, patch_size, prefix_tokens, guess=False)
            if found is None:
                unlaid.append(index)
            elif found[1] * found[2] > 1:
                special = f"{found[0]} special token(s) and " if found[0] else ""
                grids[index] = (found[0], f"tokens: {special}a {found[1]}x{found[2]} grid")
    stages = [index for index in grids if _is_stage(modules[infos[index].name])]
    if not stages:
        raise CamkitError(
            "Found no layer with a spatial output (B, C, h, w) or tokens (B, N, D) on a grid in this model, "
            "so there is nothing to map back onto the image. Pass target_layer= the module to explain "
            "(and reshape= a function from its output to (B, C, h, w) if it is not a grid)."
        )
    last = stages[-1]
    if grids[last][0] > 0:
        norms = [
            infos[index].name for index in grids if grids[index][0] > 0 and _is_token_norm(modules[infos[index].name])
        ]
        if not norms:
            raise CamkitError(
                f"The model's last grid {infos[last].name!r} carries {grids[last][0]} special token(s) (class, "
                "registers) and no norm inside its blocks, so only those tokens would receive gradient there. "
                "Pass target_layer= a layer inside the last block (its first norm, say)."
            )
        name = _vit_layer(norms)
        reason = f"the last transformer block's first norm; {grids[last][0]} special token(s) dropped"
    else:
        _refuse_unlaid_tokens(infos, unlaid, last, input_size, prefix_tokens)
        index = last
        while index + 1 < len(infos) and infos[index + 1].same_output_as == infos[index].name:
            index += 1  # name the block that returns this very map (timm's bn2, not bn2.act)
        name = infos[index].name
        reason = f"the last module whose output keeps a grid of the image, {grids[last][1]}"
    logger.info("camkit chose target layer %r (%s).", name, reason)
    return name, modules[name]


def _refuse_unlaid_tokens(
    infos: list[LayerInfo], unlaid: list[int], last: int, input_size: tuple[int, ...], prefix_tokens: int
) -> None:
    # Token outputs after the last grid, several of one length: a transformer body camkit cannot lay
    # out. Explaining the early grid (a stem) instead would be a silent, useless map.
    later = [(infos[index].name, infos[index].shape or ()) for index in unlaid if index > last]
    lengths = [shape[1] for _, shape in later]
    body = [(name, shape) for name, shape in later if lengths.count(shape[1]) >= 2]
    if not body:
        return
    name, shape = body[-1]
    raise CamkitError(
        f"The model goes on with tokens after its last grid {infos[last].name!r} ({name!r} gives "
        f"{'x'.join(map(str, shape))}), and camkit cannot lay {shape[1]} tokens on a grid for a "
        f"{'x'.join(map(str, input_size))} input (counting {prefix_tokens} special token(s)). Explaining "
        f"{infos[last].name!r} would show an early layer. Pass target_layer= the layer to explain and reshape= "
        "a function from its (B, N, D) output to (B, D, h, w); `camkit layers MODEL` lists the candidates."
    )


def _is_token_norm(module: nn.Module) -> bool:
    rms_norm = getattr(nn, "RMSNorm", None)
    return (
        isinstance(module, nn.LayerNorm)
        or (rms_norm is not None and isinstance(module, rms_norm))
        or type(module).__name__.lower() in ("rmsnorm", "layernorm")
    )


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


TORCHSCRIPT_ADVICE = (
    "PyTorch cannot hook the layers of a TorchScript module (torch.jit.script or torch.jit.trace), so no CAM can "
    "be computed from it. Explain the original nn.Module, or re-export it with torch.export: "
    "torch.export.save(torch.export.export(model, (x,)), 'model.pt2') and load it with "
    "torch.export.unflatten(torch.export.load('model.pt2'))."
)


def refuse_torchscript(model: nn.Module, layers: Sequence[tuple[str, nn.Module]] = ()) -> None:
    """A TorchScript model (or target layer) runs its own compiled graph: hooks never fire, so say so up front."""
    if isinstance(model, torch.jit.ScriptModule):
        raise CamkitTypeError(f"The model is TorchScript ({type(model).__name__}). {TORCHSCRIPT_ADVICE}")
    for name, module in layers:
        if isinstance(module, torch.jit.ScriptModule):
            raise CamkitTypeError(
                f"The target layer {name!r} is TorchScript ({type(module).__name__}). {TORCHSCRIPT_ADVICE}"
            )


def find_layers(model: nn.Module, target_layer: LayersSpec) -> list[tuple[str, nn.Module]]:
    """``target_layer`` as a list of ``(name, module)``: empty for None (choose automatically later)."""
    refuse_torchscript(model)
    if target_layer is None:
        return []
    if isinstance(target_layer, Sequence) and not isinstance(target_layer, (str, bytes)):
        if not target_layer:
            raise CamkitError("target_layer is an empty list; name at least one layer, or pass None.")
        found = [find_layer(model, layer) for layer in target_layer]
    else:
        found = [find_layer(model, target_layer)]
    refuse_torchscript(model, found)
    return found
