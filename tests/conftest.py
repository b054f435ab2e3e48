"""Shared fixtures: small random-init models, seeded, nothing downloaded."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_capture(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients (float64) from plain hooks, independent of camkit's capture."""
    store = {}

    def hook(_module, _inputs, out) -> None:
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    try:
        model(x).gather(1, torch.as_tensor(classes)[:, None]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return store["a"].detach().double(), store["g"].double()


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        for module in model.modules()
    )


@pytest.fixture(scope="session")
def shapes_model():
    """A CNN trained in a few seconds on the toy shapes task, with its held-out accuracy."""
    from .shapes import train_shapes_net

    model, accuracy = train_shapes_net()
    assert accuracy > 0.9, f"toy CNN trained to only {accuracy:.2f}"
    return model
