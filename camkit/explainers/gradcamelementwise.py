"""Element-wise Grad-CAM: map = sum_k ReLU(g_k * A_k)."""

from __future__ import annotations

import torch

from ..capture import Capture
from .base import ElementWiseExplainer
from .registry import register


@register(
    "gradcamelementwise",
    paper="Gildenblat et al., pytorch-grad-cam: element-wise Grad-CAM, 2021 (github.com/jacobgil/pytorch-grad-cam)",
)
class GradCAMElementWise(ElementWiseExplainer):
    """Positive parts of gradient times activation, summed over channels.

    HiResCAM with the ReLU moved inside the sum: a channel that argues against
    the class at a position cannot cancel one that argues for it.
    """

    def contributions(self, captured: Capture) -> torch.Tensor:
        return (captured.required_gradients() * captured.activations).clamp_min(0)
