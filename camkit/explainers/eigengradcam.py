"""Eigen-Grad-CAM: Eigen-CAM's first principal component of gradient times activation."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.pca import principal_projection
from .eigencam import PrincipalComponentExplainer
from .registry import register


@register(
    "eigengradcam",
    paper="Gildenblat et al., pytorch-grad-cam: Eigen-Grad-CAM, after Muhammad & Yeasin, "
    "Eigen-CAM, IJCNN 2020 (arXiv:2008.00299)",
)
class EigenGradCAM(PrincipalComponentExplainer):
    """First principal component of g * A over positions, sign fixed by the channel mean of g * A.

    The channel mean of A would give the opposite sign on about a third of
    images, so the sign follows the channel mean of the decomposed g * A
    itself, Eigen-CAM's rule carried over.
    """

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return principal_projection(captured.required_gradients() * captured.activations)
