"""The one place that changes and restores a model's state around a call.

An explainer or a metric needs the model in evaluation mode, autograd on for
part of the forward, and tensors that may join a graph even when the caller
is inside ``torch.inference_mode()``. :func:`explaining` does all of that and
puts back exactly what it found: each submodule's *own* train/eval flag (a
fine-tuning model with frozen BatchNorm keeps it frozen), the grad mode and the
inference mode. Nothing else in camkit calls ``model.eval()``.

Hooks and train/eval flags belong to modules, not threads, and one module may
sit in several models (two wrappers around one backbone, or a backbone and
its wrapper). A call therefore claims every module of its model, not the
model alone: calls whose models share any module run one after another (so
one call's hooks never see another's forward, and each call restores exactly
the flags it found), calls on disjoint models run at once, and a thread that
already holds a module may claim it again (a metric that runs an explainer
nests). Claims are taken all at once under one condition variable, so two
calls never hold halves of each other's modules.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn


class _ModuleClaims:
    """Which thread holds which modules, and how many times (claims are re-entrant per thread)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        # A plain dict: entries live only while a call holds them, so it keeps no module alive.
        self._holders: dict[nn.Module, tuple[int, int]] = {}

    def _free_for(self, modules: list[nn.Module], thread: int) -> bool:
        return all(self._holders.get(module, (thread, 0))[0] == thread for module in modules)

    def acquire(self, modules: list[nn.Module], timeout: float | None = None) -> bool:
        thread = threading.get_ident()
        with self._changed:
            if not self._changed.wait_for(lambda: self._free_for(modules, thread), timeout=timeout):
                return False
            for module in modules:
                self._holders[module] = (thread, self._holders.get(module, (thread, 0))[1] + 1)
            return True

    def release(self, modules: list[nn.Module]) -> None:
        with self._changed:
            for module in modules:
                holder, count = self._holders[module]
                if count == 1:
                    del self._holders[module]
                else:
                    self._holders[module] = (holder, count - 1)
            self._changed.notify_all()


_claims = _ModuleClaims()


class ModelClaim:
    """The claim on every module of one model: a re-entrant lock that excludes any call sharing a module."""

    def __init__(self, model: nn.Module) -> None:
        self._modules = list(dict.fromkeys(model.modules()))

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return _claims.acquire(self._modules, None if blocking and timeout < 0 else max(timeout, 0.0))

    def release(self) -> None:
        _claims.release(self._modules)

    def __enter__(self) -> ModelClaim:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def model_lock(model: nn.Module) -> ModelClaim:
    """The claim that serialises camkit's calls on ``model`` with every call on a model sharing a module with it."""
    return ModelClaim(model)


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
