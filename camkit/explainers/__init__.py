"""The explainers. Importing this package registers every built-in method in ``METHODS``."""
from __future__ import annotations

from .base import ChannelWeightedExplainer, ElementWiseExplainer, Explainer
from .registry import METHODS, create, methods_for, register

# Each import registers its method; the order is the order of camkit.METHODS.
from .gradcam import GradCAM  # noqa: E402  (isort: skip)
from .gradcampp import GradCAMPlusPlus  # noqa: E402
from .smoothgradcampp import SmoothGradCAMPlusPlus  # noqa: E402
from .eigencam import EigenCAM  # noqa: E402
from .cfcam import CFCAM  # noqa: E402
from .cam import CAM  # noqa: E402
from .hirescam import HiResCAM  # noqa: E402
from .gradcamelementwise import GradCAMElementWise  # noqa: E402
from .xgradcam import XGradCAM  # noqa: E402
from .layercam import LayerCAM  # noqa: E402
from .eigengradcam import EigenGradCAM  # noqa: E402
from .kpcacam import KPCACAM  # noqa: E402
from .finercam import FinerCAM  # noqa: E402
from .shapleycam import ShapleyCAM  # noqa: E402
from .fem import FEM  # noqa: E402
from .segeigencam import SegEigenCAM  # noqa: E402
from .randomcam import RandomCAM  # noqa: E402
from .refinecam import RefineCAM  # noqa: E402
from .dff import DeepFeatureFactorization  # noqa: E402

from .scorecam import ScoreCAM  # noqa: E402
from .sscam import SSCAM  # noqa: E402
from .iscam import ISCAM  # noqa: E402
from .ablationcam import AblationCAM  # noqa: E402

from .attentionbase import AttentionExplainer  # noqa: E402
from .attentionrollout import AttentionRollout  # noqa: E402
from .transformerattribution import TransformerAttribution  # noqa: E402
from .legrad import LeGrad  # noqa: E402

# The pixel methods: explanations at the input's resolution (explainers/pixel.py).
from .pixel import PixelExplainer  # noqa: E402
from .guidedbackprop import GuidedBackprop  # noqa: E402
from .guidedgradcam import GuidedGradCAM  # noqa: E402
from .saliency import Saliency  # noqa: E402
from .inputxgradient import InputXGradient  # noqa: E402
from .integratedgradients import IntegratedGradients  # noqa: E402
from .fullgrad import FullGrad  # noqa: E402



__all__ = [
    "AblationCAM", "AttentionExplainer", "AttentionRollout", "CAM", "CFCAM", "ChannelWeightedExplainer",
    "DeepFeatureFactorization", "EigenCAM", "EigenGradCAM", "ElementWiseExplainer", "Explainer", "FEM", "FinerCAM",
    "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop", "GuidedGradCAM", "HiResCAM",
    "ISCAM", "InputXGradient", "IntegratedGradients", "KPCACAM", "LayerCAM", "LeGrad", "METHODS", "PixelExplainer",
    "RandomCAM", "RefineCAM", "SSCAM", "Saliency", "ScoreCAM", "SegEigenCAM", "ShapleyCAM", "SmoothGradCAMPlusPlus",
    "TransformerAttribution", "XGradCAM", "create", "methods_for", "register",
]
