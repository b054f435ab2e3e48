"""HiResCAM: map = ReLU(sum_k g_k * A_k), the gradient applied position by position."""

from __future__ import annotations

import torch

from ..capture import Capture
from .base import ElementWiseExplainer
from .registry import register


@register(
    "hirescam",
    paper="Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations, 2020 (arXiv:2011.08891)",
)
class HiResCAM(ElementWiseExplainer):
    """Gradient times activation at every position, summed over channels (no pooling of g).

    For a model whose score is linear in the layer after it (a GAP + linear
    head), this is exactly each position's share of the score.
    """

    def contributions(self, captured: Capture) -> torch.Tensor:
        return captured.required_gradients() * captured.activations
