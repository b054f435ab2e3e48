"""The explainers, and the one table from CLI names to classes."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import CAM, ChannelWeightedCAM
from .cfcam import CFCAM
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .smoothgradcampp import SmoothGradCAMPlusPlus

METHODS: dict[str, type[CAM]] = {
    cls.name: cls
    for cls in (GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, EigenCAM, CFCAM)
}


def create(method: str, model: nn.Module, target_layer: Any = None, **options: Any) -> CAM:
    """An explainer by its CLI name (``camkit.METHODS``)."""
    try:
        cls = METHODS[method.lower()]
    except KeyError:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.") from None
    return cls(model, target_layer, **options)


__all__ = ["CAM", "ChannelWeightedCAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "EigenCAM", "CFCAM", "METHODS", "create"]
