"""Shared fixtures: small random-init models, seeded, nothing downloaded."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_model():
    """A CNN trained in a few seconds on the toy shapes task, with its held-out accuracy."""
    from .shapes import train_shapes_net

    model, accuracy = train_shapes_net()
    assert accuracy > 0.9, f"toy CNN trained to only {accuracy:.2f}"
    return model


@pytest.fixture
def single_thread():
    """torch on one thread for the test (small models and iterative solvers: thread hand-offs cost more than the maths)."""
    from .helpers import one_thread

    with one_thread():
        yield


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test: camkit never downloads while it runs."""

    def refuse(*args, **_kwargs):
        raise AssertionError(f"camkit tried to reach the network: {args}")

    import socket

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def yolo():
    """ultralytics' YOLOv8n built from its yaml (nothing downloaded), calibrated to give confident boxes."""
    from .helpers import tiny_yolo

    torch.manual_seed(0)
    return tiny_yolo()
