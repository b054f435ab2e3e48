"""IS-CAM: Score-CAM's class probabilities integrated along a path of growing masks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CamkitError
from ..layers import LayersSpec
from .registry import register
from .scorecam import ScoreCAM


@register(
    "iscam",
    paper="Naidu et al., IS-CAM: Integrated Score-CAM for axiomatic-based explanations, arXiv 2020 (arXiv:2010.03023)",
)
class ISCAM(ScoreCAM):
    """Score-CAM's class probability averaged over masks accumulated along the integration path; gradient-free.

    As the paper's algorithm: the mask of step i (1..N) is the running sum
    M_i = sum_{j<=i} (j / N) H_k, and s_k = mean over i of
    softmax(f(x * M_i))_c, the explained class's probability, as in the
    Score-CAM authors' code that IS-CAM extends (torchcam softmaxes the mean
    logit increase over the channels instead). Default ``n_samples=10`` (the
    paper's and torchcam's). Deterministic; the cost is ``n_samples``
    Score-CAMs.
    """

    def __init__(
        self, model: nn.Module, target_layer: LayersSpec = None, *, n_samples: int = 10, **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise CamkitError(f"n_samples must be a positive int, got {n_samples!r}.")
        self.n_samples = n_samples

    def variants(self) -> int:
        return self.n_samples

    def perturbed(
        self, masks: torch.Tensor, variant: torch.Tensor, channel: torch.Tensor, channels: int
    ) -> torch.Tensor:
        steps = (variant + 1).to(torch.float64)
        running_sum = steps * (steps + 1) / (2 * self.n_samples)  # sum_{j<=i} j / N
        return masks.mul_(running_sum.to(masks.dtype).reshape(-1, *([1] * (masks.dim() - 1))))
