"""The explainers. Importing this package registers every built-in method in ``METHODS``."""
from __future__ import annotations

from .base import ChannelWeightedExplainer, ElementWiseExplainer, Explainer
from .registry import METHODS, create, register

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

from .scorecam import ScoreCAM  # noqa: E402
from .sscam import SSCAM  # noqa: E402
from .iscam import ISCAM  # noqa: E402
from .ablationcam import AblationCAM  # noqa: E402

# The pixel methods: explanations at the input's resolution (explainers/pixel.py).
from .pixel import PixelExplainer  # noqa: E402
from .guidedbackprop import GuidedBackprop  # noqa: E402
from .guidedgradcam import GuidedGradCAM  # noqa: E402
from .saliency import Saliency  # noqa: E402
from .inputxgradient import InputXGradient  # noqa: E402
from .integratedgradients import IntegratedGradients  # noqa: E402
from .fullgrad import FullGrad  # noqa: E402


__all__ = [
    "AblationCAM", "CAM", "CFCAM", "ChannelWeightedExplainer", "EigenCAM", "EigenGradCAM", "ElementWiseExplainer",
    "Explainer", "FinerCAM", "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop",
    "GuidedGradCAM", "HiResCAM", "ISCAM", "InputXGradient", "IntegratedGradients", "KPCACAM", "LayerCAM", "METHODS",
    "PixelExplainer", "SSCAM", "Saliency", "ScoreCAM", "SmoothGradCAMPlusPlus", "XGradCAM", "create", "register",
]
