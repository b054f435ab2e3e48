"""Random-CAM: channels weighted by uniform(-1, 1) draws, the baseline a sanity study compares against."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError
from ..layers import LayersSpec
from .base import ChannelWeightedExplainer
from .registry import register


@register(
    "randomcam",
    paper="Gildenblat et al., pytorch-grad-cam: Random-CAM, the random baseline of Adebayo "
    "et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (arXiv:1810.03292)",
)
class RandomCAM(ChannelWeightedExplainer):
    """w_k ~ uniform(-1, 1), one draw per image and channel; no backward pass.

    ``seed``: an int makes every call draw the same weights (on any device:
    they are drawn on the CPU, then moved); None draws fresh ones each call.
    """

    uses_gradients = False
    class_specific = False

    def __init__(
        self, model: nn.Module, target_layer: LayersSpec = None, *, seed: int | None = None, **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise CamkitError(f"seed must be an int or None (fresh weights each call), got {seed!r}.")
        self.seed = seed

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        draws = torch.rand(captured.activations.shape[:2], generator=generator, dtype=torch.float64)
        return (2 * draws - 1).to(captured.activations)
