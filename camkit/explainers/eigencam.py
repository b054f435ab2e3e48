"""Eigen-CAM: the activations projected on their first principal component; gradient-free."""
from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.pca import principal_projection
from .base import Explainer
from .registry import register


@register("eigencam", paper="Muhammad & Yeasin, Eigen-CAM, IJCNN 2020 (arXiv:2008.00299)")
class EigenCAM(Explainer):
    """First principal component of the activations, sign fixed; gradient-free.

    The target is ignored for the map (it still names the explained class in ``explain()``'s result).

    The projection's sign is fixed to agree with the channel-mean activation,
    so the map is never returned inverted.
    """

    uses_gradients = False
    class_specific = False

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return principal_projection(captured.activations)
