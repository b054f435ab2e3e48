"""The one place that changes and restores a model's state around a call.

An explainer or a metric needs the model in evaluation mode, autograd on for
part of the forward, and tensors that may join a graph even when the caller
is inside ``torch.inference_mode()``. :func:`explaining` does all of that and
puts back exactly what it found: each submodule's *own* train/eval flag (a
fine-tuning model with frozen BatchNorm keeps it frozen), the grad mode and the
inference mode. Nothing else in camkit calls ``model.eval()``.

Hooks are per module, not per thread, so two threads running hooked passes on
one model would see each other's hooks. Every call on a model therefore holds
that model's lock (re-entrant, so a metric that runs an explainer nests):
calls from several threads are serialised and give the serial results.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises camkit's calls on ``model``."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[None]:
    """Hold the model's lock, switch every submodule to eval mode; afterwards restore each one's flag and grad mode."""
    with model_lock(model):
        flags = [(module, module.training) for module in model.modules()]
        grad_enabled = torch.is_grad_enabled()
        try:
            model.eval()
            yield
        finally:
            torch.set_grad_enabled(grad_enabled)
            for module, training in flags:
                module.training = training


@contextlib.contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Leave ``torch.inference_mode()`` for the block: tensors made under it can never join an autograd graph."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            yield
    else:
        yield


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Everything an explainer's call needs: the model's lock, eval mode, out of inference mode; all restored."""
    with evaluation(model), outside_inference_mode():
        yield


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off for the block: maps are computed in float32 from the captured tensors, even when the
    caller runs the model under ``torch.autocast`` (the forward keeps the caller's autocast)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


__all__ = ["evaluation", "explaining", "full_precision", "model_lock", "outside_inference_mode"]
