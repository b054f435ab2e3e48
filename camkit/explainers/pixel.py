"""The pixel methods' pipeline, the sibling of the CAM pipeline: input gradients -> attributions -> [0, 1] maps.

A pixel method overrides :meth:`PixelExplainer.attribute`: from one or more
passes backpropagated to the input (:func:`camkit.capture_input.input_gradients`)
it returns the signed, raw attribution of every input value, shaped like
``x``. The base turns that into the usual :class:`~camkit.Explanation`:
``attributions`` holds it; ``maps`` reduces it over channels -- the sum of
absolute values, sum_c |a_c| (Saliency: max_c |a_c|, as Simonyan et al.) --
and min-max normalises each image's map to [0, 1] (a flat map becomes zeros,
as for the CAM family), so overlays, metrics and the report take it as they
take a CAM map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..calls import InputsSpec, ModelCall
from ..capture_input import InputCapture
from ..errors import CamkitError
from ..layers import LayersSpec
from ..modes import explaining, full_precision
from ..ops.maps import normalised_at_size
from ..results import Explanation
from ..targets import TargetSpec
from .base import Explainer, _checked_input, _top_class
from .registry import METHODS

logger = logging.getLogger("camkit")


@dataclass
class Attribution:
    """What :meth:`PixelExplainer.attribute` returns: the attributions and what the model said."""

    values: torch.Tensor  # (B, C, *size) signed, raw (FullGrad: one channel)
    output: Any  # the model's output on the explained images, detached
    scores: torch.Tensor  # (B,)
    classes: torch.Tensor | None  # (B,)
    layer_maps: torch.Tensor | None = None  # a layer's maps when the method has one (Guided Grad-CAM)

    @classmethod
    def of(cls, values: torch.Tensor, captured: InputCapture) -> Attribution:
        return cls(values, captured.output, captured.scores, captured.classes)


class PixelExplainer(Explainer):
    """Base of the methods that explain input pixels rather than a layer's grid.

    ``target_layer`` is accepted (and checked) for a uniform
    ``camkit.create(name, model, layer)``, and ignored: these methods read
    the input (``Explanation.layer`` is ``"input"``). ``augment`` is refused.
    """

    # Whether the method reads a target layer too (Guided Grad-CAM's CAM); tests and the CLI ask.
    reads_layer: ClassVar[bool] = False
    channel_reduction: ClassVar[Literal["sum", "max"]] = "sum"

    def __init__(self, model: nn.Module, target_layer: LayersSpec = None, **options: Any) -> None:
        super().__init__(model, target_layer, **options)
        if self.augment and not self.reads_layer:
            raise CamkitError(
                f"augment=True averages CAM maps over flipped copies; {type(self).__name__} explains "
                "input pixels and takes no augment. Leave augment out."
            )
        if not self.reads_layer:
            self.layers = []
        self._said_no_relu = False

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        """The signed attribution of every input value of ``call.x``, ``(B, C, *size)``, with the model's output.

        ``call`` is the model's call on the images with its other inputs (``inputs=``): the attribution is
        with respect to the images only, the other inputs held as they are."""
        raise NotImplementedError(f"{type(self).__name__} must define attribute.")

    def explain_detections(self, x: torch.Tensor, *_args: Any, **_options: Any) -> Any:
        raise CamkitError(
            f"{type(self).__name__} does not explain detections yet; use a CAM method (Grad-CAM, "
            "Eigen-CAM, ...) with explain_detections."
        )

    def explain(self, x: torch.Tensor, target: TargetSpec = None, *, inputs: InputsSpec = None) -> Explanation:
        images = _checked_input(x)
        target = self._target(target, images.shape[0])
        with explaining(self.model):
            x = images.clone() if images.is_inference() else images
            attribution = self.attribute(ModelCall.of(self.model, x, inputs), target)
        with full_precision(x.device):
            values = attribution.values.float()
            magnitude = values.abs()
            reduced = magnitude.amax(dim=1) if self.channel_reduction == "max" else magnitude.sum(dim=1)
            maps = normalised_at_size(reduced, tuple(reduced.shape[1:]))
        predictions, probabilities = _top_class(attribution.output)
        return Explanation(
            images=images,
            maps=maps,
            layer_maps=attribution.layer_maps if attribution.layer_maps is not None else reduced,
            scores=attribution.scores,
            targets=attribution.classes,
            predictions=predictions,
            probabilities=probabilities,
            method=self.name or type(self).__name__,
            layer=self.target_layer_name or "input",
            uses_gradients=self.uses_gradients,
            class_specific=self.class_specific,
            attributions=values,
        )

    def say_if_no_relu(self, captured: InputCapture) -> None:
        """Once per explainer: a guided method on a model without ReLUs computes the plain gradient."""
        if captured.relus == 0 and not self._said_no_relu:
            self._said_no_relu = True
            logger.warning(
                "%s: the model ran no ReLU (nn.ReLU, F.relu, torch.relu, Tensor.relu), so guided "
                "backpropagation has nothing to guide and gives the plain input gradient.",
                type(self).__name__,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def gives_pixel_attributions(method: str | type) -> bool:
    """Whether a registered method (name or class) returns signed pixel ``attributions`` besides its maps."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    return isinstance(cls, type) and issubclass(cls, PixelExplainer)


__all__ = ["Attribution", "PixelExplainer", "gives_pixel_attributions"]
