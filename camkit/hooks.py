"""Capturing a layer's activation and the gradient of a score with respect to it.

One forward and one backward per batch. The forward runs without autograd up
to the target layer; the hook then swaps the layer's output for a fresh leaf
(detached, ``requires_grad``) and hands the rest of the network a copy of it.
That does three things at once:

* the backward stops at the layer (nothing before it is in the graph), so no
  parameter ``.grad`` is ever written and frozen models work;
* it works inside ``torch.no_grad()``, because the hook turns autograd on for
  the rest of the forward only;
* an in-place op downstream (VGG's ``ReLU(inplace=True)`` right after a conv)
  modifies the copy, not the captured tensor, so the activation and its
  gradient are those of the layer's real output.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import to_grid
from .targets import TargetSpec, scores_for

Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Capture:
    """What one pass through the model gives an explainer (grid layout, float32)."""

    activations: torch.Tensor  # (B, K, h, w)
    gradients: torch.Tensor | None  # (B, K, h, w), None for gradient-free methods
    output: Any  # the model's output, detached
    scores: torch.Tensor  # (B,) the explained scores
    classes: torch.Tensor | None  # (B,) explained class indices; None for a callable target


@contextlib.contextmanager
def model_left_as_found(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the call; the caller's mode and grad state afterwards."""
    was_training = model.training
    grad_enabled = torch.is_grad_enabled()
    try:
        model.eval()
        yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        model.train(was_training)


def capture_layers(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    x: torch.Tensor,
    target: TargetSpec,
    *,
    with_gradients: bool = True,
    reshape: Reshape | None = None,
    patch_size: tuple[int, int] | None = None,
) -> list[Capture]:
    """One forward (and one backward) capturing every layer in ``layers``, in their order.

    The first layer to run becomes a detached leaf and turns autograd on; the
    ones after it stay in the graph (a leaf there would cut the earlier
    layers off from the score), and each hands the rest of the model a copy.
    """
    stash: dict[str, torch.Tensor] = {}

    def hook_for(layer_name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"The target layer {layer_name!r} returned {type(tensor).__name__}, not a tensor. "
                    "Choose a layer whose output is a tensor."
                )
            if with_gradients and torch.is_grad_enabled() and tensor.requires_grad:
                captured = tensor  # already downstream of an earlier captured layer
            else:
                captured = tensor.detach()
                if with_gradients:
                    captured.requires_grad_(True)
                    torch.set_grad_enabled(True)
            stash[layer_name] = captured
            # The rest of the model gets a copy, so in-place ops there leave the capture intact.
            passed_on = captured.clone()
            if isinstance(output, tuple):
                return (passed_on, *output[1:])
            if isinstance(output, list):
                return [passed_on, *output[1:]]
            return passed_on

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers]
    try:
        with model_left_as_found(model), _outside_inference_mode():
            if x.is_inference():
                x = x.clone()
            torch.set_grad_enabled(False)
            output = model(x)
            missing = [name for name, _ in layers if name not in stash]
            if missing:
                raise ValueError(
                    f"The target layer {missing[0]!r} did not run during the forward pass. "
                    "Choose a layer that the model uses for this input."
                )
            captured = [stash[name] for name, _ in layers]
            torch.set_grad_enabled(with_gradients)
            if with_gradients or target is not None:
                scores, classes = scores_for(output, target, x.shape[0])
            else:
                scores, classes = _scores_if_classifier(output, x.shape[0], x.device)
            gradients: list[torch.Tensor | None] = [None] * len(layers)
            if with_gradients:
                if not scores.requires_grad:
                    raise ValueError(
                        f"The explained score does not depend on the target layer {layers[0][0]!r}; "
                        "choose a layer on the path from the input to that score."
                    )
                found = torch.autograd.grad(scores.sum(), captured, allow_unused=True)
                gradients = [g if g is not None else torch.zeros_like(a) for g, a in zip(found, captured)]
    finally:
        for handle in handles:
            handle.remove()

    input_hw = tuple(x.shape[2:])
    grid = reshape if reshape is not None else (lambda t: to_grid(t, input_hw, patch_size))
    results = []
    for (layer_name, _), activation, gradient in zip(layers, captured, gradients):
        activations = grid(activation.detach()).float()
        if not bool(torch.isfinite(activations).all()):
            raise ValueError(
                f"The target layer {layer_name!r} produced NaN or infinite activations for this input. "
                "Check the model's weights and that the input is normalised the way the model expects."
            )
        results.append(Capture(activations, grid(gradient).float() if gradient is not None else None,
                               _detached(output), scores.detach(), classes))
    return results


@contextlib.contextmanager
def _outside_inference_mode() -> Iterator[None]:
    # Tensors made under inference_mode can never join an autograd graph.
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            yield
    else:
        yield


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(item) for item in output)
    if isinstance(output, dict):
        return {key: _detached(value) for key, value in output.items()}
    return output


def _scores_if_classifier(output: Any, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    # A gradient-free method needs no score; report the top class when there is one.
    try:
        return scores_for(output, None, batch_size)
    except (TypeError, ValueError):
        return torch.full((batch_size,), float("nan"), device=device), None
