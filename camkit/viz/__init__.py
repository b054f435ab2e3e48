"""Colours, overlays and figures for explanations: batched torch on the device, matplotlib only to draw.

Importing this package installs the renderer that lets an ``Explanation``
draw itself (``_repr_png_``, ``show``, ``save``).
"""

from __future__ import annotations

from ..ops.images import display_images, unnormalize
from . import interactive
from .colors import IMAGENET_MEAN, IMAGENET_STD, attribution_picture, colorize, colormap_lut, overlay, to_uint8_hwc
from .detections import detection_figure, detection_overlays
from .factorization import factorization_figure
from .figures import compare, explanation_figure, overlay_grid

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "attribution_picture",
    "colorize",
    "colormap_lut",
    "compare",
    "detection_figure",
    "detection_overlays",
    "display_images",
    "explanation_figure",
    "factorization_figure",
    "interactive",
    "overlay",
    "overlay_grid",
    "to_uint8_hwc",
    "unnormalize",
]
