"""Reading a Vision Transformer's attention probabilities for one call, fused kernels included.

Attention is captured, not re-implemented. The attention modules of
torchvision (``nn.MultiheadAttention`` in ``EncoderBlock``), timm
(``Attention``, ``fused_attn`` on or off) and Hugging Face (``ViTAttention``,
eager or ``sdpa``) are found by type and name; for the explained call only,
each one runs under a :class:`~torch.overrides.TorchFunctionMode` entered by a
forward pre-hook and left by a forward hook:

- a ``F.scaled_dot_product_attention`` call (a fused kernel that never shows
  its probabilities) is answered by the same maths written out,
  ``softmax(q k^T * scale + mask) @ v``, whose probabilities are recorded;
- a ``softmax`` over the last axis of a 4-D tensor (the explicit paths) is
  recorded as it is.

Nothing on the model changes: no flag is flipped (``fused_attn``, the
attention implementation, torchvision's fast path all stay as found), and the
hooks and the mode are gone when the call returns, whatever happened. With
gradients, the recorded probabilities are tensors of the forward's graph, so
``autograd.grad`` of the explained score reaches them; ``separate_blocks``
hands each block's successor a detached copy of the block's output, so that
one backward of per-block scores gives each block its own gradient (LeGrad).

Callers hold :func:`camkit.modes.explaining` around the whole pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .calls import ModelCall, as_call
from .capture import _detached, _grad_mode, explained_scores
from .errors import CamkitError
from .layouts import patch_size_of, prefix_tokens_of, token_layout
from .modes import explaining
from .targets import TargetSpec

_SOFTMAXES = (torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax)


@dataclass(frozen=True)
class AttentionBlock:
    """One transformer block: its dotted name, the block, and its attention module."""

    name: str
    block: nn.Module
    attention: nn.Module


@dataclass
class AttentionRead:
    """What one pass gives an attention method; the probabilities of every block, in block order."""

    probabilities: list[torch.Tensor]  # (B, heads, N, N) each
    gradients: list[torch.Tensor] | None  # d score / d probabilities, when asked for
    block_outputs: list[torch.Tensor]  # (B, N, D) tokens after each block, in the graph (``separate_blocks``)
    output: Any  # the model's output
    scores: torch.Tensor  # (B,) explained scores (NaN where a gradient-free method has none)
    classes: torch.Tensor | None  # (B,) explained classes; None for a callable target
    prefix_tokens: int  # class / distillation / register tokens before the patches
    grid: tuple[int, int]  # the patch grid (h, w)
    recorded: list[torch.Tensor] = field(default_factory=list)  # the graph's own tensors behind ``probabilities``

    def gradients_of(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """d sum(scores) / d probabilities for every block, laid out as ``probabilities`` (zeros where unused)."""
        with _grad_mode(True):
            found = torch.autograd.grad(scores.sum(), self.recorded, allow_unused=True)
        return [
            torch.zeros_like(tensor) if gradient is None else gradient.reshape(tensor.shape)
            for gradient, tensor in zip(found, self.probabilities)
        ]


def is_attention(module: nn.Module) -> bool:
    """An attention module camkit can read: ``nn.MultiheadAttention`` or a module named ``...Attention``,
    not a windowed one (Swin's window attention, MaxViT's partitions: no token-to-token attention over the
    image; BEiT's ``window_size`` only sizes its relative position bias)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    name = type(module).__name__
    windowed = hasattr(getattr(module, "config", None), "window_size")  # Hugging Face's Swin family
    return (
        name.endswith("Attention")
        and not windowed
        and not any(word in name for word in ("Pool", "Cross", "Window", "RelativePositional"))
    )


def attention_blocks(model: nn.Module, within: Sequence[nn.Module] | None = None) -> list[AttentionBlock]:
    """The model's transformer blocks in order (or those at, inside or around the modules ``within``).

    An attention module is an innermost :func:`is_attention` module; its
    block is its nearest ancestor held in an ``nn.Sequential`` or
    ``nn.ModuleList`` (torchvision's ``encoder.layers``, timm's ``blocks``,
    Hugging Face's ``encoder.layer``). Blocks outside the container holding
    most of them (an attention-pooling head) are left out.
    """
    names = {module: name for name, module in model.named_modules()}
    parents = {child: module for module in model.modules() for child in module.children()}
    found: list[AttentionBlock] = []
    for module in names:
        if not is_attention(module) or any(is_attention(inner) for inner in list(module.modules())[1:]):
            continue
        block = module
        while block in parents and not isinstance(parents[block], (nn.Sequential, nn.ModuleList)):
            block = parents[block]
        if block not in parents:  # no container: the attention's own parent is its block
            block = parents.get(module, module)
        found.append(AttentionBlock(names[block] or "<model>", block, module))
    containers = [parents.get(item.block) for item in found]
    if found:
        main = max(set(containers), key=containers.count)
        found = [item for item, container in zip(found, containers) if container is main]
    if within is None:
        return found
    chosen = []
    for item in found:
        inside = set(item.block.modules())
        if any(module in inside or item.block in set(module.modules()) for module in within):
            chosen.append(item)
    return chosen


def read_attention(
    model: nn.Module,
    blocks: Sequence[AttentionBlock],
    x: torch.Tensor | ModelCall,
    target: TargetSpec,
    *,
    with_gradients: bool,
    separate_blocks: bool = False,
) -> AttentionRead:
    """One forward reading every block's attention probabilities (and, with gradients, one backward).

    ``x``: the images, or a :class:`~camkit.calls.ModelCall` that brings the model's other inputs with them.

    ``separate_blocks``: keep each block's output tokens in the graph and cut
    the graph between blocks; the caller then differentiates its own
    per-block scores (no gradient of the model's score is taken).
    """
    with explaining(model):
        return _read(model, blocks, x, target, with_gradients, separate_blocks)


def _read(
    model: nn.Module,
    blocks: Sequence[AttentionBlock],
    x: torch.Tensor | ModelCall,
    target: TargetSpec,
    with_gradients: bool,
    separate_blocks: bool,
) -> AttentionRead:
    probabilities: dict[int, list[torch.Tensor]] = {index: [] for index in range(len(blocks))}
    outputs: dict[int, torch.Tensor] = {}
    call = as_call(model, x)
    x = call.x
    with _reading(blocks, probabilities, outputs, with_gradients, separate_blocks), _grad_mode(False):
        output = call.run(model)
    missing = [blocks[index].name for index, found in probabilities.items() if len(found) != 1]
    if missing or (separate_blocks and len(outputs) != len(blocks)):
        raise CamkitError(
            f"camkit could not read the attention probabilities of block {(missing or [blocks[0].name])[0]!r}: its "
            "attention module did not run, or computes attention in a way camkit does not see (it reads "
            "F.scaled_dot_product_attention and softmax calls of torchvision, timm and Hugging Face attention)."
        )
    found = [probabilities[index][0] for index in range(len(blocks))]
    for block, tensor in zip(blocks, found):
        # nn.MultiheadAttention's probabilities come as (B * heads, N, N), the others' as (B, heads, N, N);
        # windowed attention (Swin) has a row per window, not per image.
        heads = int(getattr(block.attention, "num_heads", 1)) if tensor.dim() == 3 else 1
        if tensor.shape[0] != x.shape[0] * heads:
            raise CamkitError(
                f"The attention of block {block.name!r} has shape {tuple(tensor.shape)}, not one (heads, N, N) "
                f"per image of the batch of {x.shape[0]}: windowed or pooled attention (Swin) has no "
                "token-to-token attention over the image to roll out; use a CAM method for this model."
            )
    laid_out = [tensor.reshape(x.shape[0], -1, *tensor.shape[-2:]) for tensor in found]
    prefix, grid = _token_grid(model, laid_out[0], tuple(x.shape[2:]))
    differentiated = with_gradients and not separate_blocks
    with _grad_mode(differentiated):
        scores, classes = explained_scores(output, target, x.shape[0], required=differentiated)
    read = AttentionRead(
        laid_out,
        None,
        [outputs[index] for index in sorted(outputs)],
        _detached(output),
        scores.detach(),
        classes,
        prefix,
        grid,
        found,
    )
    if differentiated:
        if not scores.requires_grad:
            raise CamkitError(
                "The explained score does not depend on the attention of the blocks read; "
                "explain a score the transformer computes."
            )
        read.gradients = read.gradients_of(scores)
    return read


def _token_grid(
    model: nn.Module, probabilities: torch.Tensor, input_size: tuple[int, ...]
) -> tuple[int, tuple[int, int]]:
    tokens = probabilities.shape[-1]
    layout = token_layout(tokens, input_size, patch_size_of(model), prefix_tokens_of(model))
    if probabilities.dim() != 4 or probabilities.shape[-2] != tokens or layout is None:
        raise CamkitError(
            f"The attention probabilities have shape {tuple(probabilities.shape)}, which is not one (B, heads, N, N) "
            f"self-attention over a patch grid of the {'x'.join(map(str, input_size))} input; attention methods "
            "explain plain Vision Transformers (ViT, DeiT), not windowed or pooled attention."
        )
    return layout[0], (layout[1], layout[2])


class _AttentionReader(TorchFunctionMode):
    """Active inside one attention module's forward: records (or computes) its attention probabilities."""

    def __init__(self, found: list[torch.Tensor], with_gradients: bool) -> None:
        super().__init__()
        self.found = found
        self.with_gradients = with_gradients

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._written_out(*args, **kwargs)
        result = func(*args, **kwargs)
        if func in _SOFTMAXES and isinstance(result, torch.Tensor) and result.dim() == 4 and _last_axis(args, kwargs):
            return _recorded(self.found, result, self.with_gradients)
        return result

    def _written_out(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """``F.scaled_dot_product_attention`` with its probabilities in the open (eval mode: no dropout)."""
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        logits = (query @ key.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))
        if is_causal:
            allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
            logits = logits.masked_fill(~allowed, float("-inf"))
        if attn_mask is not None:
            logits = (
                logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
            )
        # In float32 for half-precision models, as fused kernels accumulate; the recorded probabilities stay float32.
        probabilities = _recorded(self.found, logits.float().softmax(dim=-1), self.with_gradients)
        mixing = probabilities.to(value.dtype)
        if dropout_p > 0:
            mixing = F.dropout(mixing, dropout_p)
        return mixing @ value


def _recorded(found: list[torch.Tensor], probabilities: torch.Tensor, with_gradients: bool) -> torch.Tensor:
    if with_gradients and torch.is_grad_enabled() and not probabilities.requires_grad:
        probabilities = probabilities.detach().requires_grad_(True)  # nothing before it needs a gradient
    found.append(probabilities)
    return probabilities


def _last_axis(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim in (-1, 3)


# nn.MultiheadAttention.forward's arguments after query, key and value, in order.
_MULTIHEAD_OPTIONS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _multihead_hooks(
    module: nn.MultiheadAttention, found: list[torch.Tensor], with_gradients: bool
) -> list[torch.utils.hooks.RemovableHandle]:
    """``nn.MultiheadAttention`` computes its probabilities in the open when asked for per-head weights.

    Its Python forward hides them from a torch-function mode, so a pre-hook
    asks for them for this call (``need_weights=True``,
    ``average_attn_weights=False``) and the forward hook records them and
    returns what the caller asked for. The weights it returns are a view of
    the probabilities its output was computed from (``._base``), which is
    what a gradient is taken of.
    """
    asked: list[tuple[bool, bool]] = []

    def before(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs = {**dict(zip(_MULTIHEAD_OPTIONS, args[3:])), **kwargs}
        asked.append((bool(kwargs.get("need_weights", True)), bool(kwargs.get("average_attn_weights", True))))
        kwargs.update(need_weights=True, average_attn_weights=False)
        inputs = list(args[:3])
        if (
            with_gradients
            and torch.is_grad_enabled()
            and not any(isinstance(tensor, torch.Tensor) and tensor.requires_grad for tensor in inputs)
        ):
            # Frozen weights and an input without a graph would take the fused fast path: one leaf for q, k, v.
            leaf = inputs[0].detach().requires_grad_(True)
            inputs = [leaf if tensor is args[0] else tensor for tensor in inputs]
        return tuple(inputs), kwargs

    def after(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> Any:
        attended, weights = output
        need, average = asked.pop()
        base = weights._base if with_gradients and weights._base is not None else None
        if base is not None and base.numel() == weights.numel():
            found.append(base)  # (B * heads, N, N): the tensor the output was computed from
        else:
            found.append(weights)
        return attended, (weights.mean(dim=1) if average else weights) if need else None

    return [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True),
    ]


@contextlib.contextmanager
def _reading(
    blocks: Sequence[AttentionBlock],
    probabilities: dict[int, list[torch.Tensor]],
    outputs: dict[int, torch.Tensor],
    with_gradients: bool,
    separate_blocks: bool,
) -> Iterator[None]:
    entered: list[_AttentionReader] = []

    def enter(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            if with_gradients:
                torch.set_grad_enabled(True)  # the rest of this forward builds the graph to the score
            if not isinstance(blocks[index].attention, nn.MultiheadAttention):
                reader = _AttentionReader(probabilities[index], with_gradients)
                reader.__enter__()
                entered.append(reader)

        return hook

    def leave(module: nn.Module, _inputs: Any, _output: Any) -> None:
        if entered and not isinstance(module, nn.MultiheadAttention):
            entered.pop().__exit__(None, None, None)

    def keep_output(index: int) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            tokens = output[0] if isinstance(output, (tuple, list)) else output
            outputs[index] = tokens
            passed_on = tokens.detach()  # the next block's attention gets its own gradient only
            return (passed_on, *output[1:]) if isinstance(output, tuple) else passed_on

        return hook

    handles = []
    try:
        for index, block in enumerate(blocks):
            handles.append(block.attention.register_forward_pre_hook(enter(index)))
            if isinstance(block.attention, nn.MultiheadAttention):
                handles += _multihead_hooks(block.attention, probabilities[index], with_gradients)
            handles.append(block.attention.register_forward_hook(leave))
            if separate_blocks:
                handles.append(block.block.register_forward_hook(keep_output(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        while entered:  # a forward that failed inside an attention module leaves its mode on the stack
            entered.pop().__exit__(None, None, None)


def grid_of(relevance: torch.Tensor, read: AttentionRead) -> torch.Tensor:
    """Relevance over the tokens ``(B, N)`` as the patch grid's map ``(B, 1, h, w)`` (special tokens dropped)."""
    patches = relevance[:, read.prefix_tokens :]
    return patches.reshape(patches.shape[0], 1, *read.grid)


def query_weights(read: AttentionRead) -> torch.Tensor:
    """Which rows of a token-to-token relevance explain the prediction ``(1, N)``: the class token's row,
    or, for a model without special tokens (average pooling), the mean of all rows."""
    tokens = read.probabilities[0].shape[-1]
    device = read.probabilities[0].device
    if read.prefix_tokens > 0:
        return F.one_hot(torch.zeros(1, dtype=torch.long, device=device), tokens).float()
    return torch.full((1, tokens), 1.0 / tokens, device=device)


__all__ = [
    "AttentionBlock",
    "AttentionRead",
    "attention_blocks",
    "grid_of",
    "is_attention",
    "query_weights",
    "read_attention",
]
