"""camkit: class activation maps for CNNs and Vision Transformers, batched on the model's device."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import cluster, metrics, modes, viz
from .calls import ModelCall, Shared
from .errors import CamkitError, CamkitTypeError, MissingDependency
from .explainers import (
    CAM,
    CFCAM,
    FEM,
    ISCAM,
    KPCACAM,
    METHODS,
    SESS,
    SSCAM,
    AblationCAM,
    AttentionExplainer,
    AttentionRollout,
    ChannelWeightedExplainer,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    ElementWiseExplainer,
    Explainer,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    InputXGradient,
    IntegratedGradients,
    LayerCAM,
    LeGrad,
    PixelExplainer,
    RandomCAM,
    RefineCAM,
    Saliency,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    TransformerAttribution,
    XGradCAM,
    create,
    register,
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
    "CAM",
    "CFCAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "AttentionExplainer",
    "AttentionRollout",
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
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "LeGrad",
    "MissingDependency",
    "ModelCall",
    "MultiLabelTarget",
    "NeuronTarget",
    "PixelExplainer",
    "RandomCAM",
    "RefineCAM",
    "Saliency",
    "ScoreCAM",
    "SegEigenCAM",
    "SegmentationTarget",
    "ShapleyCAM",
    "Shared",
    "SmoothGradCAMPlusPlus",
    "TransformerAttribution",
    "XGradCAM",
    "__version__",
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
]
