"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299)."""
from __future__ import annotations

import torch

from ..hooks import Capture
from ..ops.weighting import principal_projection
from .base import CAM


class EigenCAM(CAM):
    """The activations projected on their first principal component; gradient-free.

    The target is ignored for the map (it still names the explained class in
    ``explain()``'s result). The projection's sign is fixed to agree with the
    channel-mean activation, so the map is never returned inverted.
    """

    name = "eigencam"
    uses_gradients = False

    def layer_maps(self, captured: Capture) -> torch.Tensor:
        return principal_projection(captured.activations)
