"""Seg-Eigen-CAM: Eigen-CAM of |g| * A, its sign chosen so the larger extreme is positive."""

from __future__ import annotations

import torch

from ..capture import Capture
from ..ops.pca import principal_projection
from .eigencam import PrincipalComponentExplainer
from .registry import register


@register(
    "segeigencam",
    paper="Chung & Ying, Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic "
    "Segmentation Models, Applied Sciences 2025 (doi:10.3390/app15137562)",
)
class SegEigenCAM(PrincipalComponentExplainer):
    """First principal component of |g| * A over positions (eq. 10-12), flipped where |min| > |max| (eq. 13).

    Made for segmenters (pass a :class:`camkit.SegmentationTarget`), it works on any score.
    """

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return principal_projection(captured.required_gradients().abs() * captured.activations, sign="extreme")
