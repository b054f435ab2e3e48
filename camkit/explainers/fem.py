"""FEM: each channel thresholded by the k-sigma rule, the binary maps weighted by the channel means; gradient-free."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..capture import Capture
from ..errors import CamkitError
from ..layers import LayersSpec
from .base import ElementWiseExplainer
from .registry import register

Weighting = Literal["paper", "pytorch-grad-cam"]


@register(
    "fem",
    paper="Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, "
    "IPTA 2020 (doi:10.1109/IPTA50016.2020.9286629)",
)
class FEM(ElementWiseExplainer):
    """Feature Explanation Method: map = sum_k mu_k * [A_k > mu_k + k sigma_k]; the target is ignored.

    mu_k and sigma_k are channel k's mean and (population) standard deviation
    over positions, as the authors' code. ``weighting="pytorch-grad-cam"``
    gives pytorch-grad-cam's variant instead: the activations weighted by the
    fraction of positions above the threshold, sum_k mean_ij([A_k > T_k]) A_k.
    """

    uses_gradients = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        k: float = 2.0,
        weighting: Weighting = "paper",
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if weighting not in ("paper", "pytorch-grad-cam"):
            raise CamkitError(f"weighting must be 'paper' or 'pytorch-grad-cam', got {weighting!r}.")
        self.k, self.weighting = float(k), weighting

    def contributions(self, captured: Capture) -> torch.Tensor:
        activations = captured.activations
        positions = tuple(range(2, activations.dim()))
        means = activations.mean(dim=positions, keepdim=True)
        stds = activations.std(dim=positions, keepdim=True, correction=0)
        above = (activations > means + self.k * stds).to(activations.dtype)
        if self.weighting == "paper":
            return means * above
        return above.mean(dim=positions, keepdim=True) * activations
