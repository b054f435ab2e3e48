"""Eigen-CAM: the activations projected on their first principal component; gradient-free."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitTypeError
from ..layers import LayersSpec
from ..ops.pca import principal_projection
from .base import Explainer
from .registry import register


class PrincipalComponentExplainer(Explainer):
    """Base of the methods whose map is already a first principal component (Eigen-CAM and its relatives).

    ``eigen_smooth=True`` is accepted and changes nothing: pytorch-grad-cam's
    option replaces a weighted sum by its first principal component, which
    these maps already are (pytorch-grad-cam ignores it on them too).
    """

    def __init__(
        self, model: nn.Module, target_layer: LayersSpec = None, *, eigen_smooth: bool = False, **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        if not isinstance(eigen_smooth, bool):
            raise CamkitTypeError(f"eigen_smooth must be True or False, got {eigen_smooth!r}.")
        self.eigen_smooth = eigen_smooth


@register("eigencam", paper="Muhammad & Yeasin, Eigen-CAM, IJCNN 2020 (arXiv:2008.00299)")
class EigenCAM(PrincipalComponentExplainer):
    """First principal component of the activations, sign fixed; gradient-free.

    The target is ignored for the map (it still names the explained class in ``explain()``'s result).

    The projection's sign is fixed to agree with the channel-mean activation,
    so the map is never returned inverted.
    """

    uses_gradients = False
    class_specific = False

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return principal_projection(captured.activations)
