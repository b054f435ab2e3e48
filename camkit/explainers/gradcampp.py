"""Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), eq. 19."""
from __future__ import annotations

import torch

from ..hooks import Capture
from ..ops.weighting import gradcampp_weights
from .base import ChannelWeightedCAM


class GradCAMPlusPlus(ChannelWeightedCAM):
    """alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (0 where undefined); w_k = sum_ij alpha ReLU(g).

    Eq. 19 is the exponential-score form: the powers of the gradient of the
    raw score stand in for higher derivatives of exp(S).
    """

    name = "gradcam++"

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        gradients = captured.gradients
        squared = gradients * gradients
        return gradcampp_weights(captured.activations, gradients, squared, squared * gradients)
