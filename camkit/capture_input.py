"""One pass through the model backpropagated to the input pixels: the sibling of :mod:`camkit.capture`.

:func:`capture` in ``capture.py`` stops the backward at a target layer; the
pixel methods (saliency, guided backprop, integrated gradients, FullGrad)
need dS/dx. :func:`input_gradients` runs the forward on a fresh leaf copy of
``x`` and takes one ``autograd.grad`` with respect to it (and, for FullGrad,
to the outputs of chosen modules), so no parameter ``.grad`` is written,
frozen models work and a caller's ``torch.no_grad()`` does not matter.

:func:`guided_relus` is the one place the guided-backpropagation rule lives:
for the duration of the block every ReLU the model calls -- ``nn.ReLU``
modules and the functional forms alike (``F.relu``, ``torch.relu``,
``Tensor.relu``, their in-place twins) -- passes back only positive
gradients where its input was positive. It is a ``TorchFunctionMode``
(thread-local, removed in ``finally``), so no module is swapped, even for a
moment, and a model written with functional ReLUs is covered, which swapping
``nn.ReLU`` modules (pytorch-grad-cam, captum) misses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .calls import ModelCall, as_call
from .capture import (
    Capture,
    Layers,
    _detached,
    _grad_mode,
    _gradient_transform,
    _hooks,
    check_finite,
    explained_scores,
    layer_gradients,
    to_captures,
)
from .errors import CamkitError, model_code
from .layouts import Reshape, patch_size_of, prefix_tokens_of
from .modes import explaining
from .targets import TargetSpec

_OUT_OF_PLACE = (F.relu, torch.relu, torch.Tensor.relu)
_IN_PLACE = (torch.relu_, torch.Tensor.relu_)


@dataclass
class InputCapture:
    """What one pass backpropagated to the input gives a pixel method."""

    gradients: torch.Tensor  # (B, C, *size) dS/dx, float32
    output: Any  # the model's output, detached
    scores: torch.Tensor  # (B,) the explained scores
    classes: torch.Tensor | None  # (B,) explained class indices; None for a callable target
    relus: int  # ReLUs that ran guided (0 unless guided=True)
    # One entry per call of a watched module, in call order (a module run twice appears twice).
    modules: list[nn.Module]
    module_outputs: list[torch.Tensor]  # (B, K, ...) the module's output, float32
    module_gradients: list[torch.Tensor]  # dS/d(output), float32


class _GuidedReLU(torch.autograd.Function):
    """ReLU forward; backward passes max(grad, 0) where the input was positive (Springenberg et al.).

    It saves the output (positive exactly where the input was) and its backward is ReLU's own
    backward kernel on the clamped gradient: the same passes over memory as captum's hook.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: _GuidedMode) -> torch.Tensor:
        output = torch.relu(x)
        ctx.save_for_backward(output)
        ctx.mode = mode
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        return _relu_backward(grad, output, ctx.mode.guiding), None


class _GuidedReLUInPlace(torch.autograd.Function):
    """The in-place twin: rewrites ``x`` (marked dirty, so autograd routes x's later readers through it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: _GuidedMode) -> torch.Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.mode = mode
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        return _relu_backward(grad, output, ctx.mode.guiding), None


def _relu_backward(grad: torch.Tensor, output: torch.Tensor, guided: bool) -> torch.Tensor:
    """ReLU's backward kernel; on the clamped gradient when guiding."""
    found: torch.Tensor = torch.ops.aten.threshold_backward(grad.clamp_min(0) if guided else grad, output, 0)
    return found


class _GuidedMode(TorchFunctionMode):
    """Every ReLU call in the block goes through :class:`_GuidedReLU`; counts them.

    ``guiding`` is read when a backward reaches the ReLUs, so one forward's graph can be
    backpropagated plainly (a CAM's layer gradients) and then by the guided rule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.relus = 0
        self.guiding = True

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        in_place = func in _IN_PLACE or (
            func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        if func not in _OUT_OF_PLACE and func not in _IN_PLACE:
            return func(*args, **kwargs)
        x = args[0]
        if not (isinstance(x, torch.Tensor) and x.requires_grad):  # off the path to the input: nothing to guide
            return func(*args, **kwargs)
        self.relus += 1
        # Inside the handler the mode is off, so the Functions' own relu does not come back here.
        return _GuidedReLUInPlace.apply(x, self) if in_place else _GuidedReLU.apply(x, self)


@contextlib.contextmanager
def guided_relus(enabled: bool = True) -> Iterator[_GuidedMode | None]:
    """Guided-backprop ReLUs for the block (yields the mode, whose ``relus`` counts them); a no-op when disabled."""
    if not enabled:
        yield None
        return
    with _GuidedMode() as mode:
        yield mode


def input_gradients(
    model: nn.Module,
    x: torch.Tensor | ModelCall,
    target: TargetSpec,
    *,
    guided: bool = False,
    modules: Sequence[nn.Module] = (),
) -> InputCapture:
    """dS/dx for every image, in one forward and one backward that writes no parameter ``.grad``.

    ``guided``: ReLUs backpropagate by the guided rule (:func:`guided_relus`).
    ``modules``: modules whose outputs and dS/d(output) are returned too (FullGrad's bias layers);
    the rest of the model gets a copy of each output, so an in-place op after it leaves it intact.
    ``x`` may be a :class:`~camkit.calls.ModelCall`: the model's other inputs go in with the images, and the
    gradient is taken with respect to the images only.
    """
    call = as_call(model, x)
    with explaining(model), _grad_mode(True):
        # A leaf of our own (an inference-mode tensor cannot join a graph: cloned out of it).
        leaf = (call.x.clone() if call.x.is_inference() else call.x).detach().requires_grad_(True)
        stash: list[tuple[nn.Module, torch.Tensor]] = []
        with _watching(modules, stash), guided_relus(guided) as mode:
            output = call.with_images(leaf).run(model)
        watched = [tensor for _, tensor in stash]
        scores, classes = explained_scores(output, target, leaf.shape[0], required=True)
        if not scores.requires_grad:
            raise CamkitError("The explained score does not depend on the input; check the target and the model.")
        found = torch.autograd.grad(scores.sum(), [leaf, *watched], allow_unused=True)
    gradients = [g if g is not None else torch.zeros_like(t) for g, t in zip(found, [leaf, *watched])]
    check_finite([("input", model)], gradients[:1], "gradient")
    return InputCapture(
        gradients[0].float(),
        _detached(output),
        scores.detach(),
        classes,
        mode.relus if mode is not None else 0,
        [module for module, _ in stash],
        [t.detach().float() for t in watched],
        [g.float() for g in gradients[1:]],
    )


@dataclass(frozen=True)
class EntryConv:
    """A convolution that alone reads the input: the input's gradient is its transpose applied to the
    gradient of its output, whatever the rest of the model did. A path method (integrated gradients)
    sums its steps' gradients at this output and applies the transpose once, instead of once per pass."""

    weight: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int

    @classmethod
    def of(cls, node: Any) -> EntryConv:
        return cls(
            node._saved_weight.detach(),
            tuple(node._saved_stride),
            tuple(node._saved_padding),
            tuple(node._saved_dilation),
            bool(node._saved_transposed),
            tuple(node._saved_output_padding),
            int(node._saved_groups),
        )

    def same_as(self, other: EntryConv) -> bool:
        return (
            (self.stride, self.padding, self.dilation, self.transposed, self.output_padding, self.groups)
            == (other.stride, other.padding, other.dilation, other.transposed, other.output_padding, other.groups)
            and self.weight.shape == other.weight.shape
            and torch.equal(self.weight, other.weight)
        )

    def input_gradient(self, output_gradient: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """dS/dx from dS/d(output), for images shaped like ``images`` (float32)."""
        with torch.no_grad():
            found: torch.Tensor = torch.ops.aten.convolution_backward(
                output_gradient.float(),
                images.float(),
                self.weight.float(),
                None,
                list(self.stride),
                list(self.padding),
                list(self.dilation),
                self.transposed,
                list(self.output_padding),
                self.groups,
                [True, False, False],
            )[0]
        return found


def _entry_conv_node(scores: torch.Tensor, leaf: torch.Tensor) -> Any:
    """The autograd node of the one convolution that reads ``leaf`` as its input, or None when the leaf
    has another reader (or none) -- then only the input's own gradient is exact."""
    readers: list[tuple[Any, int]] = []
    seen: set[int] = set()
    stack = [scores.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for slot, (child, _) in enumerate(node.next_functions):
            if child is not None and getattr(child, "variable", None) is leaf:
                readers.append((node, slot))
            elif child is not None:
                stack.append(child)
    if len(readers) != 1:
        return None
    node, slot = readers[0]
    # The saved attributes are autograd's own; a torch without them takes the plain path.
    convolution = node.name() == "ConvolutionBackward0" and hasattr(node, "_saved_weight")
    return node if slot == 0 and convolution else None


def path_step_gradients(model: nn.Module, call: ModelCall, target: TargetSpec) -> tuple[torch.Tensor, EntryConv | None]:
    """One pass of a path method: dS/dx, or -- when a single convolution reads the input -- dS/d(its
    output) with that convolution (:class:`EntryConv`), whose transpose the caller applies once to the
    sum over the path. Writes no parameter ``.grad``, as :func:`input_gradients`."""
    with explaining(model), _grad_mode(True):
        leaf = (call.x.clone() if call.x.is_inference() else call.x).detach().requires_grad_(True)
        output = call.with_images(leaf).run(model)
        scores, _ = explained_scores(output, target, leaf.shape[0], required=True)
        if not scores.requires_grad:
            raise CamkitError("The explained score does not depend on the input; check the target and the model.")
        node = _entry_conv_node(scores, leaf)
        entry = EntryConv.of(node) if node is not None else None
        if node is not None:
            (found,) = torch.autograd.grad(scores.sum(), [torch.autograd.graph.GradientEdge(node, 0)])
        else:
            (found,) = torch.autograd.grad(scores.sum(), [leaf], allow_unused=True)
    if found is None:
        return torch.zeros_like(leaf, dtype=torch.float32), None
    check_finite([("input", model)], [found], "gradient")
    return found.float(), entry


@dataclass
class GuidedAndLayerCapture:
    """One forward serving a CAM method (its layers' captures) and guided backprop (the input gradient)."""

    layers: list[Capture]
    guided: InputCapture


def guided_and_layer_gradients(
    model: nn.Module,
    layers: Layers,
    x: torch.Tensor | ModelCall,
    target: TargetSpec,
    *,
    layer_gradients_too: bool,
    reshape: Reshape | None = None,
) -> GuidedAndLayerCapture:
    """One forward with guided ReLUs recorded and the target layers' outputs kept in the graph, then
    two backwards over it: the plain one to the layers (``layer_gradients_too``; the ReLUs above a
    layer backpropagate as ReLU does, so the CAM gets exactly its own gradients), then the guided
    one to the input. Equal to a CAM capture plus :func:`input_gradients` with ``guided=True``.
    """
    call = as_call(model, x)
    with explaining(model), _grad_mode(True):
        leaf = (call.x.clone() if call.x.is_inference() else call.x).detach().requires_grad_(True)
        stash: dict[str, torch.Tensor] = {}
        with _hooks(layers, stash, True), _GuidedMode() as mode:
            output = call.with_images(leaf).run(model)
        missing = [name for name, _ in layers if name not in stash]
        if missing:
            raise CamkitError(
                f"The target layer {missing[0]!r} did not run during the forward pass. "
                "Choose a layer that the model uses for this input."
            )
        tensors = [stash[name] for name, _ in layers]
        check_finite(layers, tensors, "activations")
        scores, classes = explained_scores(output, target, leaf.shape[0], required=True)
        gradients: list[torch.Tensor | None] = [None] * len(layers)
        if layer_gradients_too:
            mode.guiding = False
            try:
                found = _retained_layer_gradients(scores, tensors, layers)
            finally:
                mode.guiding = True
            check_finite(layers, found, "gradient")
            transform = _gradient_transform.get()
            gradients = [transform(g) for g in found] if transform is not None else list(found)
        if not scores.requires_grad:
            raise CamkitError("The explained score does not depend on the input; check the target and the model.")
        with model_code():
            (found_input,) = torch.autograd.grad(scores.sum(), [leaf], allow_unused=True)
    input_gradient = found_input if found_input is not None else torch.zeros_like(leaf)
    check_finite([("input", model)], [input_gradient], "gradient")
    captures = to_captures(
        tensors,
        gradients,
        output,
        scores,
        classes,
        tuple(leaf.shape[2:]),
        reshape,
        patch_size_of(model),
        prefix_tokens_of(model),
    )
    guided = InputCapture(input_gradient.float(), _detached(output), scores.detach(), classes, mode.relus, [], [], [])
    return GuidedAndLayerCapture(captures, guided)


def _retained_layer_gradients(scores: torch.Tensor, tensors: list[torch.Tensor], layers: Layers) -> list[torch.Tensor]:
    if not scores.requires_grad:
        return layer_gradients(scores, tensors, layers)  # raises its own message
    with model_code():
        found = torch.autograd.grad(scores.sum(), tensors, allow_unused=True, retain_graph=True)
    return [g if g is not None else torch.zeros_like(a) for g, a in zip(found, tensors)]


def forward_scores(
    model: nn.Module, x: torch.Tensor | ModelCall, target: TargetSpec
) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """The model's output on ``x`` (no graph), the explained scores and classes: what path methods explain."""
    call = as_call(model, x)
    with explaining(model), _grad_mode(False):
        output = call.run(model)
        scores, classes = explained_scores(output, target, call.batch, required=True)
    return _detached(output), scores.detach(), classes


@contextlib.contextmanager
def _watching(modules: Sequence[nn.Module], stash: list[tuple[nn.Module, torch.Tensor]]) -> Iterator[None]:
    def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        stash.append((module, output))
        return output.clone()

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


__all__ = [
    "EntryConv",
    "GuidedAndLayerCapture",
    "InputCapture",
    "forward_scores",
    "guided_and_layer_gradients",
    "guided_relus",
    "input_gradients",
    "path_step_gradients",
]
