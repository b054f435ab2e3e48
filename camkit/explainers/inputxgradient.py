"""Input x Gradient (Shrikumar et al.): each input value times the score's gradient with respect to it."""

from __future__ import annotations

from ..calls import ModelCall
from ..capture_input import input_gradients
from ..targets import TargetSpec
from .pixel import Attribution, PixelExplainer
from .registry import register


@register("inputxgradient", paper="Shrikumar et al., Not Just a Black Box, arXiv 2016 (arXiv:1605.01713)")
class InputXGradient(PixelExplainer):
    """x * dS/dx, signed; the map sums its magnitude over channels."""

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        captured = input_gradients(self.model, call, target)
        return Attribution.of(call.x.detach().float() * captured.gradients, captured)
