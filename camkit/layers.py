"""Finding the target layer and turning its output into a ``(B, K, h, w)`` grid.

A layer is named by its dotted module path, given as a module, or found
automatically from one dry-run forward pass that records every module's
output shape.
"""
from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

logger = logging.getLogger("camkit")

LayerSpec = Union[None, str, nn.Module]
Reshape = Callable[[torch.Tensor], torch.Tensor]

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
    layout: str | None  # "nchw", "nhwc", "tokens" or None


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Resolve a dotted name or a module object to ``(name, module)``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name or "<model>", module
        raise ValueError(
            f"The target layer {type(layer).__name__} is not a submodule of the model. "
            "Pass a module taken from this model, its dotted name, or None to choose automatically."
        )
    if not isinstance(layer, str):
        raise TypeError(
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
    raise ValueError(
        f"The model has no layer named {layer!r}; {hint}: {', '.join(close)}. "
        "`camkit layers MODEL` lists every candidate with its output shape."
    )


def output_layout(output: Any, input_hw: tuple[int, ...]) -> str | None:
    """How a module's output lays out space: ``nchw``, ``nhwc``, ``tokens`` or None."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.dim() == 4:
        if _looks_channels_last(output.shape, input_hw):
            return "nhwc"
        return "nchw"
    if output.dim() == 3 and output.shape[1] > 1:
        return "tokens"
    if output.dim() == 5:
        return "ncdhw"
    return None


def _looks_channels_last(shape: torch.Size, input_hw: tuple[int, ...]) -> bool:
    # An NHWC map's dims 1 and 2 are the input's size divided by one stride;
    # an NCHW map's dims 2 and 3 are. Prefer NCHW when both fit.
    if len(input_hw) != 2:
        return False

    def fits(h: int, w: int) -> bool:
        if h * w <= 1:
            return False
        stride_h, stride_w = input_hw[0] / h, input_hw[1] / w
        # Pooling rounds odd sizes, so the two strides agree only roughly.
        return min(stride_h, stride_w) >= 1 and abs(stride_h - stride_w) <= 0.2 * max(stride_h, stride_w)

    return fits(shape[1], shape[2]) and not fits(shape[2], shape[3])


def dry_run(model: nn.Module, x: torch.Tensor) -> list[LayerInfo]:
    """Every module's output shape, in the order the modules finish."""
    seen: list[LayerInfo] = []
    names = {module: name for name, module in model.named_modules() if name}
    input_hw = tuple(x.shape[2:])

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        seen.append(LayerInfo(names[module], type(module).__name__, shape, output_layout(output, input_hw)))

    handles = [module.register_forward_hook(record) for module in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


def auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The layer a user would pick: the last spatial map of a CNN, or a ViT's last block's first norm."""
    infos = dry_run(model, x[:1])
    modules = dict(model.named_modules())
    spatial = [
        i for i, info in enumerate(infos)
        if info.layout in ("nchw", "nhwc", "ncdhw") and _grid_area(info) > 1 and _is_stage(modules[info.name])
    ]
    token_norms = [
        i for i, info in enumerate(infos)
        if info.layout == "tokens" and isinstance(modules[info.name], nn.LayerNorm)
    ]
    last_spatial = spatial[-1] if spatial else -1
    if token_norms and token_norms[-1] > last_spatial:
        name = _vit_layer([infos[i].name for i in token_norms if i > last_spatial])
        reason = "the last transformer block's first norm"
    elif spatial:
        name = infos[last_spatial].name
        reason = "the last module whose output keeps a spatial grid"
    else:
        raise ValueError(
            "Found no layer with a spatial output (B, C, h, w) or tokens (B, N, D) in this model, "
            "so there is nothing to map back onto the image. Pass target_layer= the module to explain."
        )
    logger.info("camkit chose target layer %r (%s).", name, reason)
    return name, modules[name]


def _is_stage(module: nn.Module) -> bool:
    return not isinstance(module, _NOT_A_STAGE) and type(module).__name__ not in _NOT_A_STAGE_NAMES


def _grid_area(info: LayerInfo) -> int:
    shape = info.shape or (0, 0, 0, 0)
    if info.layout == "nhwc":
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


def patch_size_of(model: nn.Module) -> tuple[int, int] | None:
    """The patch size a ViT-like model declares, if any."""
    # torchvision ViT, timm (patch_embed) and Hugging Face (config) spell it differently.
    for owner in (model, getattr(model, "patch_embed", None), getattr(model, "config", None)):
        size = getattr(owner, "patch_size", None)
        if isinstance(size, int):
            return size, size
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return int(size[0]), int(size[1])
    return None


def to_grid(
    activation: torch.Tensor,
    input_hw: tuple[int, int],
    patch_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A layer output as ``(B, K, h, w)``: NCHW kept, NHWC permuted, tokens laid on their grid."""
    layout = output_layout(activation, input_hw)
    if layout in ("nchw", "ncdhw"):
        return activation
    if layout == "nhwc":
        return activation.permute(0, 3, 1, 2)
    if layout == "tokens":
        grid_h, grid_w = token_grid(activation.shape[1], input_hw, patch_size)
        prefix = activation.shape[1] - grid_h * grid_w
        tokens = activation[:, prefix:, :]
        return tokens.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], grid_h, grid_w)
    raise ValueError(
        f"The target layer's output has shape {tuple(activation.shape)}, which is neither a spatial map "
        "(B, C, h, w) nor tokens (B, N, D). Choose a layer with a spatial output, or pass reshape= a "
        "function that turns this output into (B, C, h, w)."
    )


def token_grid(num_tokens: int, input_hw: tuple[int, int], patch_size: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid of ``num_tokens`` tokens: from the patch size, else from the input's aspect ratio."""
    if patch_size is not None:
        grid_h, grid_w = input_hw[0] // patch_size[0], input_hw[1] // patch_size[1]
        if 0 < grid_h * grid_w <= num_tokens:
            return grid_h, grid_w
    # Special tokens (class, distillation, registers) come first and are few;
    # the patch grid has the input's aspect ratio up to the rounding of strides.
    log_aspect = math.log(input_hw[1] / input_hw[0])
    best: tuple[float, int, int] | None = None
    for prefix in range(0, min(num_tokens - 1, 17)):
        patches = num_tokens - prefix
        for grid_h in range(1, patches + 1):
            if patches % grid_h:
                continue
            grid_w = patches // grid_h
            if grid_h * grid_w < 2:
                continue
            mismatch = abs(math.log(grid_w / grid_h) - log_aspect)
            score = mismatch + 0.01 * prefix
            if mismatch <= 0.1 and (best is None or score < best[0]):
                best = (score, grid_h, grid_w)
    if best is not None:
        return best[1], best[2]
    raise ValueError(
        f"Cannot lay {num_tokens} tokens on a grid for a {input_hw[0]}x{input_hw[1]} input. "
        "Pass reshape= a function that turns the layer's (B, N, D) output into (B, D, h, w)."
    )
