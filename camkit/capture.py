"""One pass through the model: a layer's activations and the gradient of the explained score.

Four steps, each owning one thing, composed by :func:`capture`:

1. :func:`hooked_forward` -- hooks for this call only (removed in ``finally``).
   The forward runs without autograd up to the first target layer; its hook
   swaps the layer's output for a fresh leaf (detached, ``requires_grad``) and
   hands the rest of the network a copy. So the backward stops at the layer
   (no parameter ``.grad`` is written, frozen models work), it works inside
   ``torch.no_grad()``, and an in-place op downstream (VGG's
   ``ReLU(inplace=True)``) modifies the copy, not the captured tensor.
2. :func:`explained_scores` -- ``target`` to ``(B,)`` scores, refusing NaN/Inf.
3. :func:`layer_gradients` -- one ``autograd.grad`` for all layers.
4. :func:`to_captures` -- layouts to ``(B, K, *grid)`` float32.

:func:`check_finite` refuses NaN or infinite activations and gradients.

``x`` is the images alone or a :class:`camkit.calls.ModelCall` (the images
with the model's extra inputs). A :class:`camkit.targets.NeuronTarget` gets
its layer hooked for the call (:func:`scored_target`).

Callers hold :func:`camkit.modes.explaining` around the whole pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .calls import ModelCall, as_call
from .errors import CamkitError, CamkitTypeError, model_code
from .layers import find_layers
from .layouts import Reshape, patch_size_of, prefix_tokens_of, to_grid
from .modes import explaining
from .targets import NeuronTarget, TargetSpec, check_finite_scores, scores_for

Layers = Sequence[tuple[str, nn.Module]]
GradientTransform = Callable[[torch.Tensor], torch.Tensor]
# Set for one call by :func:`transformed_gradients` (per thread and task, as a context variable).
_gradient_transform: contextvars.ContextVar[GradientTransform | None] = contextvars.ContextVar(
    "camkit_gradient_transform", default=None
)
Target = TypeVar("Target")


@dataclass
class Capture:
    """What one pass through the model gives an explainer (grid layout, float32)."""

    activations: torch.Tensor  # (B, K, *grid)
    gradients: torch.Tensor | None  # (B, K, *grid); None for gradient-free methods
    output: Any  # the model's output, detached
    scores: torch.Tensor  # (B,) the explained scores (NaN where a gradient-free method has none)
    classes: torch.Tensor | None  # (B,) explained class indices; None for a callable target
    # Smooth Grad-CAM++ replaces g^2 and g^3 by their means over noisy copies.
    squared_gradients: torch.Tensor | None = None
    cubed_gradients: torch.Tensor | None = None

    def required_gradients(self) -> torch.Tensor:
        """``gradients``, for a method that captured with them (refused for a gradient-free pass)."""
        if self.gradients is None:
            raise CamkitError("This capture holds no gradients; it came from a gradient-free pass.")
        return self.gradients

    def gradient_powers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g, g^2, g^3 (or the averaged powers a smoothing capture put here)."""
        gradients = self.required_gradients()
        squared = self.squared_gradients if self.squared_gradients is not None else gradients * gradients
        cubed = self.cubed_gradients if self.cubed_gradients is not None else squared * gradients
        return gradients, squared, cubed


def capture(
    model: nn.Module,
    layers: Layers,
    x: torch.Tensor | ModelCall,
    target: TargetSpec,
    *,
    with_gradients: bool = True,
    reshape: Reshape | None = None,
    patch_size: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
) -> list[Capture]:
    """One forward (and one backward) capturing every layer in ``layers``, in their order.

    ``patch_size`` and ``prefix_tokens`` (the model's class, distillation and
    register tokens; counted from the model when None) lay token outputs on their grid.
    """
    call = as_call(model, x)
    if prefix_tokens is None:
        prefix_tokens = prefix_tokens_of(model)
    input_size = tuple(call.x.shape[2:])
    with explaining(model):
        neuron = _neuron_layer(model, target)
        recorded: list[torch.Tensor] = []
        output, tensors = hooked_forward(
            model, layers, call, with_gradients, watch=(neuron, recorded) if neuron is not None else None
        )
        check_finite(layers, tensors, "activations")
        if isinstance(target, NeuronTarget):
            target = _recorded_scores(target, recorded, input_size, patch_size, prefix_tokens)
        with _grad_mode(with_gradients):  # a score computed under the caller's no_grad would have no graph
            scores, classes = explained_scores(output, target, call.batch, required=with_gradients)
        gradients: list[torch.Tensor | None] = [None] * len(layers)
        if with_gradients:
            computed = layer_gradients(scores, tensors, layers)
            check_finite(layers, computed, "gradient")
            transform = _gradient_transform.get()
            if transform is not None:
                computed = [transform(gradient) for gradient in computed]
            gradients = list(computed)
    return to_captures(tensors, gradients, output, scores, classes, input_size, reshape, patch_size, prefix_tokens)


@contextlib.contextmanager
def transformed_gradients(transform: GradientTransform) -> Iterator[None]:
    """Inside the block every capture passes each layer's gradient (as the layer gives it) through ``transform``.

    The hook the gradient-noise robustness test needs (noise on dS/dA, the
    rest of the method untouched); scoped to the block and to this thread.
    """
    token = _gradient_transform.set(transform)
    try:
        yield
    finally:
        _gradient_transform.reset(token)


def hooked_forward(
    model: nn.Module,
    layers: Layers,
    x: torch.Tensor | ModelCall,
    with_gradients: bool,
    *,
    watch: tuple[nn.Module, list[torch.Tensor]] | None = None,
) -> tuple[Any, list[torch.Tensor]]:
    """The model's output and each layer's captured output; autograd on only after the first layer.

    ``watch`` = (module, sink): the module's output (after a target layer's hook on it) is appended to sink.
    """
    stash: dict[str, torch.Tensor] = {}
    watching = _recording(*watch) if watch is not None else contextlib.nullcontext()
    with _hooks(layers, stash, with_gradients), watching, _grad_mode(False):
        output = as_call(model, x).run(model)
    missing = [name for name, _ in layers if name not in stash]
    if missing:
        raise CamkitError(
            f"The target layer {missing[0]!r} did not run during the forward pass. "
            "Choose a layer that the model uses for this input."
        )
    return output, [stash[name] for name, _ in layers]


def explained_scores(
    output: Any, target: TargetSpec, batch_size: int, *, required: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B,)`` scores and class indices; a gradient-free method without a target gets NaN scores when the output has no classes."""
    if required or target is not None:
        scores, classes = scores_for(output, target, batch_size)
        if required:
            check_finite_scores(scores)
        return scores, classes
    try:
        return scores_for(output, None, batch_size)
    except CamkitError:
        device = output.device if isinstance(output, torch.Tensor) else None
        return torch.full((batch_size,), float("nan"), device=device), None


def layer_gradients(
    scores: torch.Tensor, tensors: list[torch.Tensor], layers: Layers, *, create_graph: bool = False
) -> list[torch.Tensor]:
    """dS/dA for every captured layer, in one backward that stops at the first layer (``create_graph``: differentiable)."""
    if not scores.requires_grad:
        raise CamkitError(
            f"The explained score does not depend on the target layer {layers[0][0]!r}; "
            "choose a layer on the path from the input to that score."
        )
    with _grad_mode(True), model_code():
        found = torch.autograd.grad(scores.sum(), tensors, allow_unused=True, create_graph=create_graph)
    return [g if g is not None else torch.zeros_like(a) for g, a in zip(found, tensors)]


def to_captures(
    tensors: list[torch.Tensor],
    gradients: Sequence[torch.Tensor | None],
    output: Any,
    scores: torch.Tensor,
    classes: torch.Tensor | None,
    input_size: tuple[int, ...],
    reshape: Reshape | None,
    patch_size: tuple[int, int] | None,
    prefix_tokens: int | None = None,
) -> list[Capture]:
    """Each layer's tensors in ``(B, K, *grid)`` float32."""
    grid: Callable[[torch.Tensor], torch.Tensor] = (
        reshape if reshape is not None else (lambda tensor: to_grid(tensor, input_size, patch_size, prefix_tokens))
    )
    return [
        Capture(
            grid(activation.detach()).float(),
            grid(gradient).float() if gradient is not None else None,
            _detached(output),
            scores.detach(),
            classes,
        )
        for activation, gradient in zip(tensors, gradients)
    ]


def concatenated(parts: Sequence[Capture]) -> Capture:
    """One layer's captures of consecutive passes as one (rows in pass order); the output is the first pass's."""
    if len(parts) == 1:
        return parts[0]

    def joined(name: str) -> Any:
        values = [getattr(part, name) for part in parts]
        return torch.cat(values, dim=0) if isinstance(values[0], torch.Tensor) and name != "output" else values[0]

    # Every field of the parts' own type: a method's capture subclass (Score-CAM's channel weights) keeps its own.
    return type(parts[0])(**{field.name: joined(field.name) for field in dataclasses.fields(parts[0])})


@contextlib.contextmanager
def scored_target(
    model: nn.Module, target: Target, call: ModelCall
) -> Iterator[Target | Callable[[Any], torch.Tensor]]:
    """The target to score forwards run inside the block: ``target`` itself, or a NeuronTarget bound to its hooked layer.

    For methods that run the model outside :func:`capture` (perturbed forwards);
    the hook lives for the block only.
    """
    neuron = _neuron_layer(model, target)
    if neuron is None or not isinstance(target, NeuronTarget):
        yield target
        return
    recorded: list[torch.Tensor] = []
    with _recording(neuron, recorded):
        yield _recorded_scores(target, recorded, tuple(call.x.shape[2:]), patch_size_of(model), prefix_tokens_of(model))


def _neuron_layer(model: nn.Module, target: object) -> nn.Module | None:
    return find_layers(model, target.layer)[0][1] if isinstance(target, NeuronTarget) else None


def _recorded_scores(
    target: NeuronTarget,
    recorded: list[torch.Tensor],
    input_size: tuple[int, ...],
    patch_size: tuple[int, int] | None,
    prefix_tokens: int | None,
) -> Callable[[Any], torch.Tensor]:
    """A target callable reading the neuron layer's latest recorded output (the model's output is not used)."""

    def scores(_output: Any) -> torch.Tensor:
        if not recorded:
            raise CamkitError(f"The NeuronTarget layer {target.layer!r} did not run during the forward pass.")
        return target.scores(to_grid(recorded[-1], input_size, patch_size, prefix_tokens))

    return scores


@contextlib.contextmanager
def _recording(module: nn.Module, sink: list[torch.Tensor]) -> Iterator[None]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(tensor, torch.Tensor):
            sink.append(tensor)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_finite(layers: Layers, tensors: Sequence[torch.Tensor | None], what: str) -> None:
    """Refuse NaN or infinite activations / gradients, naming the layer."""
    for (layer_name, _), tensor in zip(layers, tensors):
        # One sum first: it is finite whenever every value is (and costs one pass, isfinite's test four).
        if (
            tensor is not None
            and not bool(torch.isfinite(tensor.detach().sum()))
            and not bool(torch.isfinite(tensor.detach()).all())
        ):
            raise CamkitError(
                f"The target layer {layer_name!r} produced NaN or infinite {what} for this input. "
                "Check the model's weights and that the input is normalised the way the model expects."
            )


@contextlib.contextmanager
def _hooks(layers: Layers, stash: dict[str, torch.Tensor], with_gradients: bool) -> Iterator[None]:
    handles = [module.register_forward_hook(_stashing_hook(name, stash, with_gradients)) for name, module in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stashing_hook(layer_name: str, stash: dict[str, torch.Tensor], with_gradients: bool) -> Callable[..., Any]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(tensor, torch.Tensor):
            raise CamkitTypeError(
                f"The target layer {layer_name!r} returned {type(tensor).__name__}, not a tensor. "
                "Choose a layer whose output is a tensor."
            )
        if with_gradients and torch.is_grad_enabled() and tensor.requires_grad:
            captured = tensor  # downstream of an earlier captured layer: stay in its graph
        else:
            captured = tensor.detach()
            if with_gradients:
                captured.requires_grad_(True)
                torch.set_grad_enabled(True)  # the rest of this forward builds the graph to the score
        stash[layer_name] = captured
        # The rest of the model gets a copy, so in-place ops there leave the capture intact.
        passed_on = captured.clone()
        if isinstance(output, tuple):
            return (passed_on, *output[1:])
        if isinstance(output, list):
            return [passed_on, *output[1:]]
        return passed_on

    return hook


@contextlib.contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    # The hook switches grad mode on mid-forward; restore the caller's mode whatever happened.
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(enabled)
    try:
        yield
    finally:
        torch.set_grad_enabled(previous)


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(item) for item in output)
    if isinstance(output, dict):
        return {key: _detached(value) for key, value in output.items()}
    return output


__all__ = [
    "Capture",
    "capture",
    "check_finite",
    "concatenated",
    "explained_scores",
    "hooked_forward",
    "layer_gradients",
    "scored_target",
    "to_captures",
    "transformed_gradients",
]
