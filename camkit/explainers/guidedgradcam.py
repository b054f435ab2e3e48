"""Guided Grad-CAM (Selvaraju et al.): guided backpropagation times the upsampled map of any CAM method."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..calls import ModelCall
from ..capture_input import guided_and_layer_gradients, input_gradients
from ..errors import CamkitError
from ..layers import LayersSpec, auto_layer
from ..modes import full_precision
from ..targets import NeuronTarget, TargetSpec
from .base import Explainer
from .pixel import Attribution, PixelExplainer
from .registry import create, register

# The options every explainer takes; Guided Grad-CAM keeps them and hands them, with the rest, to its CAM.
_SHARED = ("reshape", "fuse", "augment", "batch_size")


@register("guidedgradcam", paper="Selvaraju et al., Grad-CAM, ICCV 2017 (arXiv:1610.02391)")
class GuidedGradCAM(PixelExplainer):
    """Guided backprop times a CAM map (Grad-CAM by default): pixel detail, class-discriminative.

    ``cam``: any registered CAM method's name or class; the other options
    (``eigen_smooth``, ``augment``, ...) go to it. attributions = guided
    backprop x the CAM's own ``(B, H, W)`` map in [0, 1], which explains the
    same classes (for ``target=None``, the CAM call's top classes).

    One forward serves both maps when the CAM reads one forward and backward
    (Grad-CAM, Grad-CAM++, XGrad-CAM, Eigen-CAM, ... without ``augment``): the
    forward records guided ReLUs, a plain backward gives the CAM its layer
    gradients (the ReLUs above the layer backpropagate as ReLU does, so the map
    is the CAM's own) and a guided backward over the same graph gives the input
    gradient. CAMs with passes of their own (Score-CAM, Smooth Grad-CAM++,
    ``augment``, neuron targets) run their call, then one guided pass.
    """

    reads_layer: ClassVar[bool] = True
    cost: ClassVar[str] = "the CAM's, + forward + backward"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        cam: str | type[Explainer] = "gradcam",
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **{key: options[key] for key in _SHARED if key in options})
        self.cam = create(cam, model, target_layer, **options)
        if isinstance(self.cam, PixelExplainer):
            raise CamkitError(
                f"cam must be a CAM method (gradcam, gradcam++, scorecam, ...), got {cam!r}, "
                "which explains pixels itself."
            )
        self.class_specific = self.cam.class_specific

    @property
    def target_layer_name(self) -> str | None:
        return self.cam.target_layer_name

    def shares_forward(self, target: TargetSpec) -> bool:
        """Whether the CAM's map comes from the guided pass's forward (one forward for both maps)."""
        cam = self.cam
        return type(cam).capture is Explainer.capture and not cam.augment and not isinstance(target, NeuronTarget)

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        target = self.cam._target(target, call.x.shape[0])
        if self.shares_forward(target):
            return self._attribute_in_one_forward(call, target)
        explained = self.cam.explain(call.x, target, inputs=call.inputs())
        # The guided pass explains what the CAM explained: its classes, or the same callable.
        captured = input_gradients(
            self.model, call, explained.targets if explained.targets is not None else target, guided=True
        )
        self.say_if_no_relu(captured)
        values = captured.gradients * explained.maps.unsqueeze(1)
        return Attribution(values, captured.output, captured.scores, captured.classes, explained.layer_maps)

    def _attribute_in_one_forward(self, call: ModelCall, target: TargetSpec) -> Attribution:
        cam, x = self.cam, call.x
        if not cam.layers:
            cam.layers = [auto_layer(self.model, call)]
        both = guided_and_layer_gradients(
            self.model, cam.layers, call, target, layer_gradients_too=cam.uses_gradients, reshape=cam.reshape
        )
        self.say_if_no_relu(both.guided)
        with full_precision(x.device):
            layer_maps, _ = cam._layer_maps(both.layers)
            maps = cam.combine(layer_maps, tuple(x.shape[2:]))
        values = both.guided.gradients * maps.unsqueeze(1)
        return Attribution(values, both.guided.output, both.guided.scores, both.guided.classes, layer_maps[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cam={self.cam!r})"
