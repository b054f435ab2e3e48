"""camkit: class activation maps for CNNs and Vision Transformers, batched on the model's device."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import cluster, metrics, modes, viz
from .calls import ModelCall, Shared
from .errors import CamkitError, CamkitTypeError, MissingDependency
from .explainers import (
    CAM, CFCAM, ISCAM, KPCACAM, METHODS, SSCAM, AblationCAM, AttentionExplainer, AttentionRollout,
    ChannelWeightedExplainer, EigenCAM, EigenGradCAM, ElementWiseExplainer, Explainer, FinerCAM, GradCAM,
    GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, LeGrad, ScoreCAM, SmoothGradCAMPlusPlus,
    TransformerAttribution, XGradCAM, create, register,
)
from .explainers import FEM, DeepFeatureFactorization, RandomCAM, RefineCAM, SegEigenCAM, ShapleyCAM
from .explainers import (
    FullGrad, GuidedBackprop, GuidedGradCAM, InputXGradient, IntegratedGradients, PixelExplainer, Saliency,
)
from .results import Explanation
from .targets import CaptionTarget, DetectionTarget, MultiLabelTarget, NeuronTarget, SegmentationTarget
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
    "Saliency",
    "PixelExplainer",
    "IntegratedGradients",
    "InputXGradient",
    "GuidedGradCAM",
    "GuidedBackprop",
    "FullGrad",
    "AblationCAM",
    "AttentionExplainer",
    "AttentionRollout",
    "CAM",
    "CFCAM",
    "ISCAM",
    "CamkitError",
    "CamkitTypeError",
    "CaptionTarget",
    "ChannelWeightedExplainer",
    "DeepFeatureFactorization",
    "DetectionTarget",
    "EigenCAM",
    "EigenGradCAM",
    "ElementWiseExplainer",
    "Explainer",
    "Explanation",
    "FEM",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "KPCACAM",
    "LayerCAM",
    "LeGrad",
    "METHODS",
    "MissingDependency",
    "ModelCall",
    "MultiLabelTarget",
    "NeuronTarget",
    "RandomCAM",
    "RefineCAM",
    "SSCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "SegmentationTarget",
    "Shared",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "TransformerAttribution",
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
