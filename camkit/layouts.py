"""How a layer's output lays out space, and turning it into a ``(B, K, *grid)`` map.

CNN layers give ``(B, C, h, w)`` (or ``(B, C, d, h, w)`` for volumes);
torchvision's Swin gives channels-last ``(B, h, w, C)``; Vision Transformers
give tokens ``(B, N, D)``, a few special tokens (class, distillation,
registers) followed by the patch grid. :class:`Layout` names the four; a
user-supplied ``reshape`` overrides the rule.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import CamkitError

Reshape = Callable[[torch.Tensor], torch.Tensor]


class Layout(str, enum.Enum):
    """A layer output's layout (a ``str`` subclass, so ``Layout.NCHW == "nchw"``)."""

    NCHW = "nchw"
    NHWC = "nhwc"
    NCDHW = "ncdhw"
    TOKENS = "tokens"

    def __str__(self) -> str:
        return self.value

    @property
    def spatial(self) -> bool:
        """A grid of positions already (no tokens to lay out)."""
        return self is not Layout.TOKENS


def output_layout(output: Any, input_size: tuple[int, ...]) -> Layout | None:
    """How a module's output lays out space, or None when it has no spatial or token structure."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.dim() == 4:
        return Layout.NHWC if _looks_channels_last(output.shape, input_size) else Layout.NCHW
    if output.dim() == 3 and output.shape[1] > 1:
        return Layout.TOKENS
    if output.dim() == 5:
        return Layout.NCDHW
    return None


def _looks_channels_last(shape: torch.Size, input_size: tuple[int, ...]) -> bool:
    # An NHWC map's dims 1 and 2 are the input's size divided by one stride;
    # an NCHW map's dims 2 and 3 are. Prefer NCHW when both fit.
    if len(input_size) != 2:
        return False

    def fits(h: int, w: int) -> bool:
        if h * w <= 1:
            return False
        stride_h, stride_w = input_size[0] / h, input_size[1] / w
        # Pooling rounds odd sizes, so the two strides agree only roughly.
        return min(stride_h, stride_w) >= 1 and abs(stride_h - stride_w) <= 0.2 * max(stride_h, stride_w)

    return fits(shape[1], shape[2]) and not fits(shape[2], shape[3])


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
    input_size: tuple[int, ...],
    patch_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A layer output as ``(B, K, *grid)``: NCHW and NCDHW kept, NHWC permuted, tokens laid on their grid."""
    layout = output_layout(activation, input_size)
    if layout in (Layout.NCHW, Layout.NCDHW):
        return activation
    if layout is Layout.NHWC:
        return activation.permute(0, 3, 1, 2)
    if layout is Layout.TOKENS and len(input_size) == 2:
        grid_h, grid_w = token_grid(activation.shape[1], input_size, patch_size)
        prefix = activation.shape[1] - grid_h * grid_w
        tokens = activation[:, prefix:, :]
        return tokens.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], grid_h, grid_w)
    raise CamkitError(
        f"The target layer's output has shape {tuple(activation.shape)}, which is neither a spatial map "
        "(B, C, h, w) / (B, C, d, h, w) nor tokens (B, N, D). Choose a layer with a spatial output, or pass "
        "reshape= a function that turns this output into (B, C, h, w)."
    )


def token_grid(num_tokens: int, input_size: tuple[int, int], patch_size: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid of ``num_tokens`` tokens: from the patch size, else from the input's aspect ratio."""
    if patch_size is not None:
        grid_h, grid_w = input_size[0] // patch_size[0], input_size[1] // patch_size[1]
        if 0 < grid_h * grid_w <= num_tokens:
            return grid_h, grid_w
    # Special tokens (class, distillation, registers) come first and are few;
    # the patch grid has the input's aspect ratio up to the rounding of strides.
    log_aspect = math.log(input_size[1] / input_size[0])
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
    raise CamkitError(
        f"Cannot lay {num_tokens} tokens on a grid for a {input_size[0]}x{input_size[1]} input. "
        "Pass reshape= a function that turns the layer's (B, N, D) output into (B, D, h, w)."
    )


__all__ = ["Layout", "Reshape", "output_layout", "patch_size_of", "to_grid", "token_grid"]
