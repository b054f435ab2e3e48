"""Grad-CAM: w_k = mean_ij dS/dA_kij; map = ReLU(sum_k w_k A_k)."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.weighting import mean_gradient_weights
from .base import ChannelWeightedExplainer
from .registry import register


@register("gradcam", paper="Selvaraju et al., Grad-CAM, ICCV 2017 (arXiv:1610.02391)")
class GradCAM(ChannelWeightedExplainer):
    """Each channel weighted by its mean gradient."""

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        return mean_gradient_weights(captured.required_gradients())
