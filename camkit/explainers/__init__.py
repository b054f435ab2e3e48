"""The explainers. Importing this package registers every built-in method in ``METHODS``."""

# The import order below is the registration order, which is the order of camkit.METHODS, the CLI and README:
# it is meaningful, so import sorting is off for this file.
# ruff: noqa: I001
from __future__ import annotations

from .base import ChannelWeightedExplainer, ElementWiseExplainer, Explainer
from .registry import METHODS, create, methods_for, register

# Each import registers its method; the order is the order of camkit.METHODS.
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .smoothgradcampp import SmoothGradCAMPlusPlus
from .eigencam import EigenCAM
from .cfcam import CFCAM
from .cam import CAM
from .hirescam import HiResCAM
from .gradcamelementwise import GradCAMElementWise
from .xgradcam import XGradCAM
from .layercam import LayerCAM
from .eigengradcam import EigenGradCAM
from .kpcacam import KPCACAM
from .finercam import FinerCAM
from .shapleycam import ShapleyCAM
from .fem import FEM
from .segeigencam import SegEigenCAM
from .randomcam import RandomCAM
from .refinecam import RefineCAM
from .dff import DeepFeatureFactorization

from .scorecam import ScoreCAM
from .sscam import SSCAM
from .iscam import ISCAM
from .ablationcam import AblationCAM

from .attentionbase import AttentionExplainer
from .attentionrollout import AttentionRollout
from .transformerattribution import TransformerAttribution
from .legrad import LeGrad

# The pixel methods: explanations at the input's resolution (explainers/pixel.py).
from .pixel import PixelExplainer, gives_pixel_attributions
from .guidedbackprop import GuidedBackprop
from .guidedgradcam import GuidedGradCAM
from .saliency import Saliency
from .inputxgradient import InputXGradient
from .integratedgradients import IntegratedGradients
from .fullgrad import FullGrad

# Meta-methods: a base method run on patches of the image.
from .sess import SESS

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
    "gives_pixel_attributions",
    "methods_for",
    "register",
]
