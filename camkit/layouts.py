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


# Learned special tokens as the libraries name them: torchvision (class_token), timm (cls_token,
# dist_token, reg_token), Hugging Face (cls_token, distillation_token, register_tokens, and CLIP's
# class_embedding). Each is (D,), (1, D) or (1, n, D): n tokens of width D.
_SPECIAL_TOKEN_PARAMETERS = (
    "class_token",
    "cls_token",
    "class_embedding",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)
# More leading tokens than this are not taken for special tokens when the model does not say how many it has.
_MAX_GUESSED_PREFIX = 16


def prefix_tokens_of(model: nn.Module) -> int:
    """How many special tokens (class, distillation, registers) a ViT-like model puts before its patches.

    timm says so itself (``num_prefix_tokens``); otherwise the learned token
    parameters of the first module holding any are counted (0 when there are none).
    """
    for module in model.modules():
        declared = getattr(module, "num_prefix_tokens", None)
        if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
            return declared
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf in _SPECIAL_TOKEN_PARAMETERS and parameter.dim() >= 1 and parameter.shape[-1] > 0:
            counts[owner] = counts.get(owner, 0) + parameter.numel() // parameter.shape[-1]
    # A second ViT inside the model (a teacher, a text tower's twin) has its own tokens: count one owner.
    return next(iter(counts.values()), 0)


def to_grid(
    activation: torch.Tensor,
    input_size: tuple[int, ...],
    patch_size: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
) -> torch.Tensor:
    """A layer output as ``(B, K, *grid)``: NCHW and NCDHW kept, NHWC permuted, tokens laid on their grid.

    ``prefix_tokens`` is the model's count of special tokens (:func:`prefix_tokens_of`);
    a layer before they are added (a patch embedding) has none, and that is tried next.
    """
    layout = output_layout(activation, input_size)
    if layout in (Layout.NCHW, Layout.NCDHW):
        return activation
    if layout is Layout.NHWC:
        return activation.permute(0, 3, 1, 2)
    if layout is Layout.TOKENS and len(input_size) == 2:
        grid_h, grid_w = token_grid(activation.shape[1], input_size, patch_size, prefix_tokens)
        prefix = activation.shape[1] - grid_h * grid_w
        tokens = activation[:, prefix:, :]
        return tokens.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], grid_h, grid_w)
    raise CamkitError(
        f"The target layer's output has shape {tuple(activation.shape)}, which is neither a spatial map "
        "(B, C, h, w) / (B, C, d, h, w) nor tokens (B, N, D). Choose a layer with a spatial output, or pass "
        "reshape= a function that turns this output into (B, C, h, w)."
    )


def token_grid(
    num_tokens: int,
    input_size: tuple[int, int],
    patch_size: tuple[int, int] | None,
    prefix_tokens: int | None = None,
) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of ``num_tokens`` tokens; the tokens before it are special tokens.

    Raises :class:`CamkitError` naming ``reshape=`` when no grid fits.
    """
    found = token_layout(num_tokens, input_size, patch_size, prefix_tokens)
    if found is None:
        raise CamkitError(
            f"Cannot lay {num_tokens} tokens on a grid for a {input_size[0]}x{input_size[1]} input"
            + (f" (the model has {prefix_tokens} special tokens)" if prefix_tokens else "")
            + ". Pass reshape= a function that turns the layer's (B, N, D) output into (B, D, h, w)."
        )
    return found[1], found[2]


def token_layout(
    num_tokens: int,
    input_size: tuple[int, ...],
    patch_size: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    *,
    guess: bool = True,
) -> tuple[int, int, int] | None:
    """``(special tokens, grid h, grid w)`` for ``num_tokens`` tokens of an ``input_size`` image, or None.

    In order: the patch size's grid (after at most 16 special tokens); then,
    for hierarchical models whose grid shrinks stage by stage (Swin, LeViT), a
    grid the input's size divided by one stride rounds to, after the model's
    special tokens or none; then (``guess``) after up to 16 special tokens the
    model did not declare, where the grid must also keep the input's aspect ratio.
    """
    if len(input_size) != 2 or num_tokens < 2:
        return None
    height, width = int(input_size[0]), int(input_size[1])
    known = [prefix for prefix in dict.fromkeys((prefix_tokens or 0, 0)) if prefix < num_tokens]
    if patch_size is not None:
        grid_h, grid_w = height // patch_size[0], width // patch_size[1]
        extra = num_tokens - grid_h * grid_w
        if grid_h * grid_w > 0 and (extra in known or 0 <= extra <= _MAX_GUESSED_PREFIX):
            return extra, grid_h, grid_w
    for prefix in known:
        grid = _strided_grid(num_tokens - prefix, height, width, max_mismatch=None)
        if grid is not None:
            return prefix, *grid
    if guess:
        for prefix in range(1, min(num_tokens - 1, _MAX_GUESSED_PREFIX + 1)):
            grid = _strided_grid(num_tokens - prefix, height, width, max_mismatch=0.1)
            if prefix not in known and grid is not None:
                return prefix, *grid
    return None


def _strided_grid(patches: int, height: int, width: int, max_mismatch: float | None) -> tuple[int, int] | None:
    """The grid of ``patches`` positions that an ``height`` x ``width`` input divided by one stride rounds to.

    A stack of strided layers maps a side n to floor(n / s) or ceil(n / s) for
    its total stride s (the same s and the same layers for both sides, so a
    longer side never gets fewer positions). Among the factorisations that
    fit, the one closest to the input's aspect ratio wins.
    """
    log_aspect = math.log(width / height)
    best: tuple[float, int, int] | None = None
    for grid_h in range(1, patches + 1):
        if patches % grid_h:
            continue
        grid_w = patches // grid_h
        if grid_h * grid_w < 2 or grid_h > height or grid_w > width:
            continue
        if (
            (height < width and grid_h > grid_w)
            or (height > width and grid_h < grid_w)
            or (height == width and grid_h != grid_w)
        ):
            continue
        # n / s rounds to g (down or up) exactly when n / (g + 1) < s < n / (g - 1).
        low = max(height / (grid_h + 1), width / (grid_w + 1))
        high = min(height / (grid_h - 1) if grid_h > 1 else math.inf, width / (grid_w - 1) if grid_w > 1 else math.inf)
        if low >= high:
            continue
        mismatch = abs(math.log(grid_w / grid_h) - log_aspect)
        if max_mismatch is not None and mismatch > max_mismatch:
            continue
        if best is None or mismatch < best[0]:
            best = (mismatch, grid_h, grid_w)
    return (best[1], best[2]) if best is not None else None


__all__ = [
    "Layout",
    "Reshape",
    "output_layout",
    "patch_size_of",
    "prefix_tokens_of",
    "to_grid",
    "token_grid",
    "token_layout",
]
