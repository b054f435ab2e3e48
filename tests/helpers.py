"""References shared by the tests, written independently of camkit's own code paths."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


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


def reference_finish(layer_maps: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    """DESIGN.md's output rule in float64: ReLU, upsample (half-pixel centres), min-max per image."""
    mode = "bilinear" if len(size) == 2 else "trilinear"
    maps = F.interpolate(layer_maps.double().clamp_min(0)[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * len(size)
    return ((maps - low.reshape(shape)) / (high - low).reshape(shape)).numpy()


def reference_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per map, float64 (no upsampling)."""
    flat = maps.double().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps.double() - low.reshape(shape)) / (high - low).reshape(shape)


# Options that keep a loop over every method quick: few noisy samples, few scored channels
# (the perturbation methods run one forward per scored channel and sample).
QUICK_OPTIONS: dict[str, dict[str, int]] = {
    "smoothgradcam++": {"n_samples": 2},
    "scorecam": {"top_channels": 8},
    "sscam": {"top_channels": 8, "n_samples": 2},
    "iscam": {"top_channels": 8, "n_samples": 2},
    "ablationcam": {"top_channels": 8},
}


def quick_options(cls: type) -> dict[str, int]:
    """A method's options for a loop over ``camkit.METHODS`` that must stay fast."""
    return dict(QUICK_OPTIONS.get(getattr(cls, "name", ""), {}))


@contextlib.contextmanager
def quick_defaults() -> Iterator[None]:
    """``QUICK_OPTIONS`` as the methods' defaults for the block: for code that builds explainers itself (the CLI)."""
    import functools

    import camkit

    originals = {}
    for name, options in QUICK_OPTIONS.items():
        cls = camkit.METHODS[name]
        originals[cls] = cls.__dict__.get("__init__")
        cls.__init__ = functools.partialmethod(cls.__init__, **options)
    try:
        yield
    finally:
        for cls, init in originals.items():
            if init is None:
                del cls.__init__
            else:
                cls.__init__ = init


def tiny_cnn(channels: int = 12, classes: int = 5) -> torch.nn.Module:
    """A two-conv CNN with a global-pooling head: few channels, so per-channel loops stay fast.

    Layer ``"3"`` (a ReLU) is the one to explain: non-negative, at half the input's resolution.
    """
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, classes),
    ).eval()


def forward_batch_sizes(model: torch.nn.Module) -> tuple[list[int], Callable[[], None]]:
    """The batch size of every forward of ``model`` from now on, and a function that stops recording."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    return seen, handle.remove


def correlation(first: torch.Tensor, second) -> float:
    """Pearson correlation of two batches of maps, flattened together."""
    a = torch.as_tensor(first).double().flatten()
    b = torch.as_tensor(second).double().flatten()
    return float(torch.corrcoef(torch.stack((a, b)))[0, 1])


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        for module in model.modules()
    )


@contextlib.contextmanager
def user_code_on_path() -> Iterator[None]:
    """``tests/`` importable, for ``--model factory_model:...`` (a user's own module)."""
    sys.path.insert(0, str(TESTS))
    try:
        yield
    finally:
        sys.path.remove(str(TESTS))
