"""XGrad-CAM: w_k = sum_ij A_kij g_kij / sum_ij A_kij (0 where sum_ij A_kij = 0)."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.weighting import activation_normalised_weights
from .base import ChannelWeightedExplainer
from .registry import register


@register("xgradcam", paper="Fu et al., Axiom-based Grad-CAM, BMVC 2020 (arXiv:2008.02312)")
class XGradCAM(ChannelWeightedExplainer):
    """Gradients averaged with the activations as weights (sensitivity and conservation axioms).

    No epsilon: a channel whose activations sum to exactly zero gets weight 0.
    """

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        return activation_normalised_weights(captured.activations, captured.required_gradients())
