"""SS-CAM: Score-CAM with each channel's mask smoothed by Gaussian noise, its probabilities averaged."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CamkitError
from ..layers import LayersSpec
from .registry import register
from .scorecam import ScoreCAM


@register(
    "sscam",
    paper="Wang et al., SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization, "
    "arXiv 2020 (arXiv:2006.14255)",
)
class SSCAM(ScoreCAM):
    """Score-CAM's class probability averaged over noisy copies of each channel's mask; gradient-free.

    s_k = mean over m of softmax(f(x * (H_k + N(0, sigma^2))))_c, the noise
    drawn at the input's resolution. Defaults as the paper (and torchcam):
    ``n_samples=35``, ``sigma=2.0``. The weights are the Score-CAM authors'
    class probabilities (SS-CAM is built on their code); torchcam instead
    softmaxes the mean logit increase over the channels. ``seed`` makes the
    noise reproducible: the field added to channel k's m-th copy depends on
    (seed, m, k) only, never on the chunking, the batch or ``top_channels``.
    The cost is ``n_samples`` Score-CAMs.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        n_samples: int = 35,
        sigma: float = 2.0,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise CamkitError(f"n_samples must be a positive int, got {n_samples!r}.")
        if not sigma >= 0:
            raise CamkitError(f"sigma must be >= 0 (the noise's standard deviation on [0, 1] masks), got {sigma!r}.")
        self.n_samples, self.sigma, self.seed = n_samples, float(sigma), int(seed)

    def variants(self) -> int:
        return self.n_samples

    def perturbed(
        self, masks: torch.Tensor, variant: torch.Tensor, channel: torch.Tensor, channels: int
    ) -> torch.Tensor:
        # One generator stream per (copy, channel), drawn whole: the noise
        # depends on the seed, the copy and the channel only.
        keys, inverse = torch.unique(variant * channels + channel, return_inverse=True)
        generator = torch.Generator(device=masks.device)
        fields = torch.empty((len(keys), *masks.shape[1:]), dtype=masks.dtype, device=masks.device)
        for slot, key in enumerate(keys.tolist()):
            generator.manual_seed(self.seed * 1_000_003 + key)
            fields[slot] = torch.randn(masks.shape[1:], generator=generator, dtype=masks.dtype, device=masks.device)
        return masks.add_(fields[inverse].mul_(self.sigma))
