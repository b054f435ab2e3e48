"""camkit: class activation maps for CNNs and Vision Transformers, batched on the model's device."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import cluster, metrics, modes, viz
from .errors import CamkitError, CamkitTypeError, MissingDependency
from .explainers import (
    CFCAM, ISCAM, METHODS, SSCAM, AblationCAM, ChannelWeightedExplainer, EigenCAM, Explainer, GradCAM, GradCAMPlusPlus,
    ScoreCAM, SmoothGradCAMPlusPlus, create, register,
)
from .results import Explanation
from .targets import DetectionTarget, MultiLabelTarget, SegmentationTarget
from .viz import compare, interactive

try:
    __version__ = version("camkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AblationCAM",
    "CFCAM",
    "ISCAM",
    "METHODS",
    "CamkitError",
    "CamkitTypeError",
    "ChannelWeightedExplainer",
    "DetectionTarget",
    "EigenCAM",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "MissingDependency",
    "MultiLabelTarget",
    "SSCAM",
    "ScoreCAM",
    "SegmentationTarget",
    "SmoothGradCAMPlusPlus",
    "cluster",
    "compare",
    "create",
    "interactive",
    "metrics",
    "modes",
    "register",
    "viz",
    "__version__",
]
