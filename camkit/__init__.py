"""camkit: class activation maps for CNNs and Vision Transformers, batched on the model's device."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import cluster, interactive, metrics, viz
from .explainers import CAM, CFCAM, METHODS, EigenCAM, GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, create
from .results import Explanation
from .targets import DetectionTarget, MultiLabelTarget, SegmentationTarget
from .viz import compare

try:
    __version__ = version("camkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "CAM",
    "CFCAM",
    "METHODS",
    "EigenCAM",
    "DetectionTarget",
    "Explanation",
    "MultiLabelTarget",
    "SegmentationTarget",
    "GradCAM",
    "GradCAMPlusPlus",
    "SmoothGradCAMPlusPlus",
    "cluster",
    "compare",
    "create",
    "interactive",
    "metrics",
    "viz",
    "__version__",
]
