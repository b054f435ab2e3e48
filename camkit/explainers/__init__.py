"""The explainers. Importing this package registers every built-in method in ``METHODS``."""

from __future__ import annotations

from .ablationcam import AblationCAM
from .attentionbase import AttentionExplainer
from .attentionrollout import AttentionRollout
from .base import ChannelWeightedExplainer, ElementWiseExplainer, Explainer
from .cam import CAM
from .cfcam import CFCAM
from .dff import DeepFeatureFactorization
from .eigencam import EigenCAM
from .eigengradcam import EigenGradCAM
from .fem import FEM
from .finercam import FinerCAM
from .fullgrad import FullGrad

# Each import registers its method; the order is the order of camkit.METHODS.
from .gradcam import GradCAM
from .gradcamelementwise import GradCAMElementWise
from .gradcampp import GradCAMPlusPlus
from .guidedbackprop import GuidedBackprop
from .guidedgradcam import GuidedGradCAM
from .hirescam import HiResCAM
from .inputxgradient import InputXGradient
from .integratedgradients import IntegratedGradients
from .iscam import ISCAM
from .kpcacam import KPCACAM
from .layercam import LayerCAM
from .legrad import LeGrad

# The pixel methods: explanations at the input's resolution (explainers/pixel.py).
from .pixel import PixelExplainer
from .randomcam import RandomCAM
from .refinecam import RefineCAM
from .registry import METHODS, create, methods_for, register
from .saliency import Saliency
from .scorecam import ScoreCAM
from .segeigencam import SegEigenCAM
from .shapleycam import ShapleyCAM
from .smoothgradcampp import SmoothGradCAMPlusPlus
from .sscam import SSCAM
from .transformerattribution import TransformerAttribution
from .xgradcam import XGradCAM

__all__ = [
    "CAM",
    "CFCAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SSCAM",
    "AblationCAM",
    "AttentionExplainer",
    "AttentionRollout",
    "ChannelWeightedExplainer",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "ElementWiseExplainer",
    "Explainer",
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
    "PixelExplainer",
    "RandomCAM",
    "RefineCAM",
    "Saliency",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "TransformerAttribution",
    "XGradCAM",
    "create",
    "methods_for",
    "register",
]
