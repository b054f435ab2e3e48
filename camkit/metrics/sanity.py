"""Sanity checks (Adebayo et al. 2018): does the map depend on the class and on the weights?"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..calls import InputsSpec
from ..errors import CamkitError
from ..targets import TargetSpec
from .faithfulness import explained_classes


def class_sensitivity(
    explainer: Callable[..., torch.Tensor],
    x: torch.Tensor,
    targets_a: TargetSpec,
    targets_b: TargetSpec,
    *,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """Pearson correlation between each image's maps for two classes (``inputs``: the model's other inputs).

    1 means the map ignores which class it explains (a failed sanity check,
    Adebayo et al. 2018); near 0 or negative means it is class-specific.
    """
    return pearson(_explained(explainer, x, targets_a, inputs), _explained(explainer, x, targets_b, inputs))


def _explained(
    explainer: Callable[..., torch.Tensor], x: torch.Tensor, target: TargetSpec, inputs: InputsSpec
) -> torch.Tensor:
    # Plain callables (a peer's explainer) need not take inputs=; pass it only when there are some.
    return explainer(x, target) if inputs is None else explainer(x, target, inputs=inputs)


def model_randomisation(
    explainer_factory: Callable[[nn.Module], Callable[..., torch.Tensor]],
    model: nn.Module,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """Spearman rank correlation between maps of the model and of a copy with top layers re-drawn.

    A faithful method's map should change (low correlation) when the weights it
    explains are randomised (Adebayo et al. 2018). ``layers`` names the modules
    to re-initialise; by default the classifier head after the explained layer
    and the explained layer itself. The original model is never modified.
    """
    explainer = explainer_factory(model)
    original = _explained(explainer, x, target, inputs)
    classes = explained_classes(model, x, target, inputs)
    randomised = copy.deepcopy(model)
    names = (
        list(layers) if layers is not None else _top_layers(randomised, getattr(explainer, "target_layer_name", None))
    )
    modules = dict(randomised.named_modules())
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            if name not in modules:
                raise CamkitError(f"model has no layer named {name!r} to randomise.")
            for module in modules[name].modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return spearman(original, _explained(explainer_factory(randomised), x, classes, inputs))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of two map batches (0 where either map is constant)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator.clamp_min(1e-300), 0.0).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation (ties broken by position)."""

    def ranks(values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1).argsort(dim=1, stable=True).argsort(dim=1).double()

    return pearson(ranks(a), ranks(b))


def _top_layers(model: nn.Module, target_layer: str | None) -> list[str]:
    names = [name for name, module in model.named_children() if any(True for _ in module.parameters())]
    if target_layer is None:
        return names[-1:]
    top = target_layer.split(".")[0]
    return names[names.index(top) :] if top in names else names[-1:]
