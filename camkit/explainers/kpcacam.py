"""KPCA-CAM: Eigen-CAM with RBF kernel PCA over the layer's positions; gradient-free."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError
from ..layers import LayersSpec
from ..ops.pca import kernel_principal_projection
from .eigencam import PrincipalComponentExplainer
from .registry import register


@register(
    "kpcacam",
    paper="Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models "
    "using Kernel PCA, MMSP 2024 (arXiv:2410.00267)",
)
class KPCACAM(PrincipalComponentExplainer):
    """First kernel principal component (RBF) of the activations, sign fixed; gradient-free.

    ``gamma`` is the RBF rate (None: 1 / channels, scikit-learn's default).
    One batched eigendecomposition of the (positions x positions) kernels on
    the device; the sign follows Eigen-CAM's rule. The target is ignored.
    """

    uses_gradients = False
    class_specific = False

    def __init__(
        self, model: nn.Module, target_layer: LayersSpec = None, *, gamma: float | None = None, **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        if gamma is not None and not gamma > 0:
            raise CamkitError(f"gamma must be a positive number or None (1 / channels), got {gamma!r}.")
        self.gamma = gamma

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return kernel_principal_projection(captured.activations, self.gamma)
