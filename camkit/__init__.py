"""camkit: class activation maps for CNNs and Vision Transformers, batched on the model's device."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import cluster, metrics, modes, viz
from .errors import CamkitError, CamkitTypeError, MissingDependency
from .explainers import (
    CAM, CFCAM, ISCAM, KPCACAM, METHODS, SSCAM, AblationCAM, ChannelWeightedExplainer, EigenCAM, EigenGradCAM,
    ElementWiseExplainer, Explainer, FinerCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
    ScoreCAM, SmoothGradCAMPlusPlus, XGradCAM, create, register,
)
from .explainers import (
    FullGrad, GuidedBackprop, GuidedGradCAM, InputXGradient, IntegratedGradients, PixelExplainer, Saliency,
)
from .results import Explanation
from .targets import DetectionTarget, MultiLabelTarget, SegmentationTarget
from .viz import compare, interactive



def __getattr__(name: str) -> object:
    # load_images reads files, so it lives in the application storey; imported on first use only,
    # which keeps `import camkit` free of the application and of PIL.
    if name == "load_images":
        from .app.io import load_images

        return load_images
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


try:
    __version__ = version("camkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "Saliency",
    "PixelExplainer",
    "IntegratedGradients",
    "InputXGradient",
    "GuidedGradCAM",
    "GuidedBackprop",
    "FullGrad",
    "AblationCAM",
    "CAM",
    "CFCAM",
    "ISCAM",
    "CamkitError",
    "CamkitTypeError",
    "ChannelWeightedExplainer",
    "DetectionTarget",
    "EigenCAM",
    "EigenGradCAM",
    "ElementWiseExplainer",
    "Explainer",
    "Explanation",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "KPCACAM",
    "LayerCAM",
    "METHODS",
    "MissingDependency",
    "MultiLabelTarget",
    "SSCAM",
    "ScoreCAM",
    "SegmentationTarget",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "cluster",
    "compare",
    "create",
    "interactive",
    "load_images",
    "metrics",
    "modes",
    "register",
    "viz",
    "__version__",
]
