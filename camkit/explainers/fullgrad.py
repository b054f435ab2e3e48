"""FullGrad (Srinivas & Fleuret): |x * dS/dx| plus |b * dS/dz| of every convolution and BatchNorm bias, rescaled and summed."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calls import ModelCall
from ..capture_input import input_gradients
from ..errors import CamkitError
from ..layers import LayersSpec
from ..ops.maps import min_max_normalise
from ..targets import TargetSpec
from .pixel import Attribution, PixelExplainer
from .registry import register

Rescale = Literal["layer", "channel"]
# The epsilon each reference adds to the span it divides by: the authors' _postProcess (eps=1e-6),
# pytorch-grad-cam's scale_cam_image (1e-7 + max).
REFERENCE_EPSILON: dict[str, float] = {"layer": 1e-6, "channel": 1e-7}


@register(
    "fullgrad",
    paper="Srinivas & Fleuret, Full-Gradient Representation for Neural Network Visualization, "
    "NeurIPS 2019 (arXiv:1905.00780)",
)
class FullGrad(PixelExplainer):
    """abs(x * dS/dx) plus every conv/BatchNorm bias-gradient map abs(b * dS/dz), each rescaled to [0, 1], summed.

    z is the output of a convolution or BatchNorm layer with a bias (BatchNorm's
    effective bias in eval mode: beta - mu * gamma / sqrt(var + eps)); all of
    them are used, ``target_layer`` is ignored. ``rescale="layer"`` (default)
    is the authors' code (github idiap/fullgrad-saliency): each term min-max
    normalised per image over all its channels, upsampled with
    ``align_corners=True``, summed over channels. ``rescale="channel"`` is
    pytorch-grad-cam's: every channel normalised on its own, upsampled with
    half-pixel centres. Each normalisation is ``(t - min t) / (max(t - min t) + epsilon)``
    as both codes write it; ``epsilon=None`` (default) takes the chosen code's
    own (1e-6 for "layer", 1e-7 for "channel"), so the maps are theirs;
    ``epsilon=0`` is exact min-max (a constant term becomes zeros), which
    unlike the references does not change when the score is scaled.
    ``attributions`` is the summed map, one non-negative channel.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        rescale: Rescale = "layer",
        epsilon: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if rescale not in ("layer", "channel"):
            raise CamkitError(
                f"rescale must be 'layer' (the authors' code) or 'channel' (pytorch-grad-cam's), got {rescale!r}."
            )
        self.rescale: Rescale = rescale
        if epsilon is not None and not (isinstance(epsilon, (int, float)) and epsilon >= 0):
            raise CamkitError(
                f"epsilon must be a number >= 0 (0: exact min-max) or None (the chosen rescale's own), got {epsilon!r}."
            )
        self.epsilon = float(REFERENCE_EPSILON[rescale] if epsilon is None else epsilon)

    def attribute(self, call: ModelCall, target: TargetSpec) -> Attribution:
        x = call.x
        biased = [module for module in self.model.modules() if _bias_of(module) is not None]
        captured = input_gradients(self.model, call, target, modules=biased)
        size = tuple(x.shape[2:])
        total = self._rescaled((x.detach().float() * captured.gradients).abs(), size)
        for module, gradients in zip(captured.modules, captured.module_gradients):
            bias = _bias_of(module)
            if bias is None or gradients.dim() != x.dim():  # a 1-D BatchNorm or a conv over another grid: no image map
                continue
            bias = bias.float().reshape(1, -1, *([1] * (x.dim() - 2)))
            total = total + self._rescaled((gradients * bias).abs(), size)
        return Attribution.of(total.unsqueeze(1), captured)

    def _rescaled(self, terms: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """``(B, K, *grid)`` non-negative terms to one ``(B, *size)`` map: normalised, summed over K, upsampled."""
        rows = terms.flatten(0, 1) if self.rescale == "channel" else terms
        normalised = _normalised(rows, self.epsilon).reshape(terms.shape)
        summed = normalised.sum(dim=1, keepdim=True)  # upsampling is linear: summing first is the same, K times cheaper
        if tuple(summed.shape[2:]) != size:
            mode = "bilinear" if len(size) == 2 else "trilinear"
            summed = F.interpolate(summed, size=size, mode=mode, align_corners=self.rescale == "layer")
        return summed[:, 0]


def _normalised(terms: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each row ``(t - min) / (span + epsilon)``, the references' order; ``epsilon=0``: exact min-max."""
    if epsilon == 0:
        return min_max_normalise(terms)
    shape = (-1,) + (1,) * (terms.dim() - 1)
    shifted = terms - terms.flatten(1).amin(dim=1).reshape(shape)
    return shifted / (shifted.flatten(1).amax(dim=1).reshape(shape) + epsilon)


def _bias_of(module: nn.Module) -> torch.Tensor | None:
    """A convolution's bias, or BatchNorm's effective bias in eval mode; None for other modules and bias-free ones."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.bias is not None:
        return module.bias.detach()
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None:
        if module.running_mean is None or module.running_var is None:
            return module.bias.detach()
        scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
        return module.bias.detach() - module.running_mean * scale
    return None
