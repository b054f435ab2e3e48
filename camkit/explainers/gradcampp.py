"""Grad-CAM++, eq. 19: alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (0 where undefined); w_k = sum_ij alpha ReLU(g)."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.weighting import gradcampp_weights
from .base import ChannelWeightedExplainer
from .registry import register


@register("gradcam++", paper="Chattopadhay et al., Grad-CAM++, WACV 2018 (arXiv:1710.11063)")
class GradCAMPlusPlus(ChannelWeightedExplainer):
    """Eq. 19 exactly (no epsilon): positive gradients weighted by alpha.

    Eq. 19 is the exponential-score form: powers of the raw score's gradient
    stand in for higher derivatives of exp(S).

    The powers come from ``Capture.gradient_powers()``, so a capture that
    averages them over noisy copies (Smooth Grad-CAM++) reuses this formula.
    """

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        return gradcampp_weights(captured.activations, *captured.gradient_powers())
