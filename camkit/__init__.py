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
from .results import Explanation
from .targets import DetectionTarget, MultiLabelTarget, SegmentationTarget
from .viz import compare, interactive



# Names from the application storey (reading files, the bundled demo): imported on first use only,
# which keeps `import camkit` free of the application and of PIL.
_APPLICATION = {"load_images": "io", "demo_model": "demo", "demo_images": "demo"}


def __getattr__(name: str) -> object:
    if name in _APPLICATION:
        import importlib

        return getattr(importlib.import_module(f".app.{_APPLICATION[name]}", __name__), name)
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Tab completion shows the lazily imported names too.
    return sorted(set(globals()) | set(__all__))


try:
    __version__ = version("camkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
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
    "demo_images",
    "demo_model",
    "interactive",
    "load_images",
    "metrics",
    "modes",
    "register",
    "viz",
    "__version__",
]
