"""The one table from method names to explainer classes: ``@register`` fills it, ``create`` reads it.

The CLI's ``--method`` choices, ``camkit methods``, the README's method table
and the notebooks all learn the methods and their papers from ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..errors import CamkitError, CamkitTypeError
from .base import Explainer

ExplainerClass = TypeVar("ExplainerClass", bound=type[Explainer])

METHODS: dict[str, type[Explainer]] = {}


def register(name: str, *, paper: str) -> Callable[[ExplainerClass], ExplainerClass]:
    """Class decorator: add an :class:`Explainer` subclass to ``camkit.METHODS`` under ``name``.

    ``paper`` cites the method ("Author et al., Title, venue year (arXiv:...)").
    A name that is already taken raises: two methods never share a name.
    """
    if not isinstance(name, str) or not name or name != name.strip().lower() or "," in name:
        raise CamkitError(f"A method name must be a non-empty lower-case string without commas, got {name!r}.")
    if not isinstance(paper, str) or not paper.strip():
        raise CamkitError(f"register({name!r}) needs paper= the method's citation.")

    def decorate(cls: ExplainerClass) -> ExplainerClass:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise CamkitTypeError(f"@register({name!r}) decorates a subclass of camkit.Explainer, got {cls!r}.")
        if name in METHODS:
            raise CamkitError(
                f"The method name {name!r} is already registered to {METHODS[name].__qualname__}; choose another name."
            )
        cls.name, cls.paper = name, paper
        METHODS[name] = cls
        return cls

    return decorate


def create(method: str | type[Explainer], model: nn.Module, target_layer: Any = None, **options: Any) -> Explainer:
    """An explainer by its registered name (``camkit.METHODS``) or its class, with its options."""
    if isinstance(method, type) and issubclass(method, Explainer):
        return method(model, target_layer, **options)
    if not isinstance(method, str):
        raise CamkitTypeError(
            f"method must be a method name ({', '.join(METHODS)}) or a camkit.Explainer subclass, "
            f"got {type(method).__name__}."
        )
    try:
        cls = METHODS[method.strip().lower()]
    except KeyError:
        raise CamkitError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.") from None
    return cls(model, target_layer, **options)


def methods_for(model: nn.Module) -> list[str]:
    """The registered methods that can explain ``model`` (``--method all``): every CAM method; the attention
    methods only where the model has transformer blocks."""
    return [name for name, cls in METHODS.items() if cls.applies_to(model)]


__all__ = ["METHODS", "create", "methods_for", "register"]
