"""Guided backpropagation (Springenberg et al.): the input gradient with every ReLU passing back only positive gradients."""

from __future__ import annotations

from ..calls import ModelCall
from ..capture_input import input_gradients
from ..targets import TargetSpec
from .pixel import Attribution, PixelExplainer
from .registry import register


@register("guidedbackprop", paper="Springenberg et al., Striving for Simplicity, ICLR workshop 2015 (arXiv:1412.6806)")
class GuidedBackprop(PixelExplainer):
    """Input gradient through guided ReLUs (positive gradients where the input was positive), signed.

    The guided rule covers ``nn.ReLU`` modules and functional ReLUs
    (``F.relu``, ``torch.relu``, ``Tensor.relu``, in place or not) for the
    call only; no module is swapped. A model without ReLUs (GELU ViTs, SiLU
    EfficientNets) gets the plain input gradient, said once on the
    ``camkit`` logger.
    """

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        captured = input_gradients(self.model, call, target, guided=True)
        self.say_if_no_relu(captured)
        return Attribution.of(captured.gradients, captured)
