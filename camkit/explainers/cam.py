"""CAM: w_k = W[c, k] of the linear classifier after global average pooling; gradient-free."""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec, find_layer
from ..targets import logits_of
from .base import ChannelWeightedExplainer
from .registry import register


@register(
    "cam", paper="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016 (arXiv:1512.04150)"
)
class CAM(ChannelWeightedExplainer):
    """Each channel weighted by the classifier's weight for the class; no backward pass.

    ``fc_layer`` names the ``nn.Linear`` after the pooling, or a 1x1
    ``nn.Conv2d`` classifier before it (SqueezeNet's; its bias and the ReLU
    after it are left out, as torchcam), by name or as the module; None takes
    the last such layer with as many inputs as the layer has channels and as
    many outputs as the model has classes. On a GAP + linear head the map
    equals Grad-CAM's. The target must be a class.
    """

    uses_gradients = False
    needs_class_logits = True  # a classifier's weights per class: nothing to weigh on a detector

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        fc_layer: str | nn.Module | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        self.fc_layer: nn.Linear | nn.Conv2d | None = None
        if fc_layer is not None:
            module = find_layer(model, fc_layer)[1]
            if not _is_classifier(module):
                raise CamkitTypeError(f"fc_layer must be an nn.Linear or a 1x1 nn.Conv2d, got {module!r}.")
            self.fc_layer = module

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        if captured.classes is None:
            raise CamkitError(
                "CAM weighs channels by a class's classifier weights; pass target=None, "
                "a class index or one per image, not a callable."
            )
        channels, classes = captured.activations.shape[1], logits_of(captured.output).shape[1]
        fc = self.fc_layer or _last_linear(self.model, channels, classes)
        if fc.weight.shape[:2] != (classes, channels):
            raise CamkitError(
                f"fc_layer has weights {tuple(fc.weight.shape)}, but CAM needs (classes={classes}, "
                f"channels={channels}); name the classifier that follows the layer's pooling."
            )
        return fc.weight.detach().reshape(classes, channels)[captured.classes].to(captured.activations)


def _is_classifier(module: nn.Module) -> TypeGuard[nn.Linear | nn.Conv2d]:
    """An nn.Linear, or a 1x1 convolution acting as one at every position (SqueezeNet, NiN)."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.stride == (1, 1)
    )


def _last_linear(model: nn.Module, channels: int, classes: int) -> nn.Linear | nn.Conv2d:
    found = [m for m in model.modules() if _is_classifier(m) and tuple(m.weight.shape[:2]) == (classes, channels)]
    if not found:
        raise CamkitError(
            f"CAM needs a linear classifier from the layer's {channels} channels to the {classes} "
            "classes (global average pooling + nn.Linear, or a 1x1 convolution) and this model has "
            "none; pass fc_layer= or use Grad-CAM, which equals CAM on such a head."
        )
    return found[-1]
