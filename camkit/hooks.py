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
from collections.abc import Callable, Iterator
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


def capture(
    model: nn.Module,
    layer: nn.Module,
    layer_name: str,
    x: torch.Tensor,
    target: TargetSpec,
    *,
    with_gradients: bool = True,
    reshape: Reshape | None = None,
    patch_size: tuple[int, int] | None = None,
) -> Capture:
    """Run ``model(x)`` once, capturing ``layer``'s output and d(score)/d(output)."""
    stash: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"The target layer {layer_name!r} returned {type(tensor).__name__}, not a tensor. "
                "Choose a layer whose output is a tensor."
            )
        leaf = tensor.detach()
        if with_gradients:
            leaf.requires_grad_(True)
            torch.set_grad_enabled(True)
        stash["activation"] = leaf
        # The rest of the model gets a copy, so in-place ops there leave `leaf` intact.
        passed_on = leaf.clone()
        if isinstance(output, tuple):
            return (passed_on, *output[1:])
        if isinstance(output, list):
            return [passed_on, *output[1:]]
        return passed_on

    handle = layer.register_forward_hook(hook)
    try:
        with model_left_as_found(model), _outside_inference_mode():
            if x.is_inference():
                x = x.clone()
            torch.set_grad_enabled(False)
            output = model(x)
            if "activation" not in stash:
                raise ValueError(
                    f"The target layer {layer_name!r} did not run during the forward pass. "
                    "Choose a layer that the model uses for this input."
                )
            activation = stash["activation"]
            torch.set_grad_enabled(with_gradients)
            if with_gradients or target is not None:
                scores, classes = scores_for(output, target, x.shape[0])
            else:
                scores, classes = _scores_if_classifier(output, x.shape[0], x.device)
            gradient = None
            if with_gradients:
                if not scores.requires_grad:
                    raise ValueError(
                        f"The explained score does not depend on the target layer {layer_name!r}; "
                        "choose a layer on the path from the input to that score."
                    )
                (gradient,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
                if gradient is None:
                    gradient = torch.zeros_like(activation)
    finally:
        handle.remove()

    input_hw = tuple(x.shape[2:])
    grid = reshape if reshape is not None else (lambda t: to_grid(t, input_hw, patch_size))
    activations = grid(activation.detach()).float()
    if not bool(torch.isfinite(activations).all()):
        raise ValueError(
            f"The target layer {layer_name!r} produced NaN or infinite activations for this input. "
            "Check the model's weights and that the input is normalised the way the model expects."
        )
    gradients = grid(gradient).float() if gradient is not None else None
    return Capture(activations, gradients, _detached(output), scores.detach(), classes)


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
