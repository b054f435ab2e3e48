"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391)."""
from __future__ import annotations

import torch

from ..hooks import Capture
from ..ops.weighting import mean_gradient_weights
from .base import ChannelWeightedCAM


class GradCAM(ChannelWeightedCAM):
    """w_k = mean_ij dS/dA_kij; map = ReLU(sum_k w_k A_k)."""

    name = "gradcam"

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        return mean_gradient_weights(captured.gradients)
