"""Saliency (Simonyan et al.): the gradient of the score with respect to each input value."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import nn

from ..calls import ModelCall
from ..capture_input import input_gradients
from ..errors import CamkitTypeError
from ..layers import LayersSpec
from ..targets import TargetSpec
from .pixel import Attribution, PixelExplainer
from .registry import register


@register("saliency", paper="Simonyan et al., Deep Inside Convolutional Networks, ICLR workshop 2014 (arXiv:1312.6034)")
class Saliency(PixelExplainer):
    """The input gradient's magnitude abs(dS/dx); the map is its largest over channels.

    ``abs=True`` (the paper's and captum's default) gives |dS/dx| as the
    attributions; ``abs=False`` keeps the sign. The map is max_c |dS/dx_c|,
    the paper's reduction over colour channels.
    """

    channel_reduction: ClassVar[Literal["sum", "max"]] = "max"

    def __init__(self, model: nn.Module, target_layer: LayersSpec = None, *, abs: bool = True, **options: Any) -> None:
        super().__init__(model, target_layer, **options)
        if not isinstance(abs, bool):
            raise CamkitTypeError(f"abs must be True or False, got {abs!r}.")
        self.absolute = abs

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        captured = input_gradients(self.model, call, target)
        return Attribution.of(captured.gradients.abs() if self.absolute else captured.gradients, captured)
