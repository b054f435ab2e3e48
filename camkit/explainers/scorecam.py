"""Score-CAM: each channel weighted by the class probability of the input masked with that channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture, scored_target
from ..ops.maps import min_max_normalise, upsample
from ..ops.perturbation import rows_of, scattered, strongest_channels, varying_channels
from .perturbation import PerturbationExplainer, Probe, row_scores
from .registry import register


@register(
    "scorecam",
    paper="Wang et al., Score-CAM: Score-Weighted Visual Explanations for CNNs, CVPRW 2020 (arXiv:1910.01279)",
)
class ScoreCAM(PerturbationExplainer):
    """Each channel weighted by the class probability of the input masked with it; gradient-free.

    As the authors' code: channel A_k is upsampled to the input size
    (bilinear, half-pixel centres) and min-max normalised to a mask H_k;
    s_k = softmax(f(x * H_k))_c, the probability of the explained class c;
    the map is ReLU(sum_k s_k A_k), which equals their sum of the upsampled
    channels because upsampling is linear. Channels constant at the layer
    are skipped without a forward (weight 0). With a callable target the
    callable's score of the masked copy is used as s_k (no softmax).

    Every (image, channel) pair is one row; the rows of all images run
    together in chunks bounded by ``memory_budget``. ``top_channels`` scores
    only the channels of largest activation norm.
    """

    # The number of masked copies per channel; SS-CAM and IS-CAM use several.
    def variants(self) -> int:
        return 1

    def perturbed(
        self, masks: torch.Tensor, variant: torch.Tensor, channel: torch.Tensor, channels: int
    ) -> torch.Tensor:
        """The masks of the rows' copies ``(R, *size)``; Score-CAM uses H_k itself. ``masks`` may be changed in place."""
        return masks

    def score_channels(
        self,
        call: ModelCall,
        captured: Capture,
        layer: nn.Module,
        probe: Probe,
        target: torch.Tensor | Callable[[Any], torch.Tensor],
    ) -> torch.Tensor:
        x, activations = call.x, captured.activations
        batch, channels = activations.shape[:2]
        selected = strongest_channels(activations, self.top_channels) & varying_channels(activations)
        image_index, channel_index = rows_of(selected)
        pairs, variants = image_index.shape[0], self.variants()
        totals = torch.zeros(pairs, dtype=torch.float64, device=x.device)
        size = tuple(x.shape[2:])
        chunk_rows = self.rows_per_chunk(x, probe.largest)
        # The masked copies of every chunk are written into one buffer, masked in place.
        copies = x.new_empty((min(chunk_rows, pairs * variants), *x.shape[1:]))
        # Row r is copy r // pairs of pair r % pairs; each chunk makes only its own masks.
        for row in self.chunks(pairs * variants, chunk_rows):
            row = row.to(x.device)
            pair, variant = row % pairs, row // pairs
            images, chunk_channels = image_index[pair], channel_index[pair]
            masks = min_max_normalise(upsample(activations[images, chunk_channels], size))
            masks = self.perturbed(masks, variant, chunk_channels, channels)
            masked = torch.index_select(x, 0, images, out=copies[: len(row)])
            masked.mul_(masks.unsqueeze(1).to(x.dtype))  # in place, in the buffer reused across chunks
            chunk = call.rows(images, masked)
            with scored_target(self.model, target, chunk) as row_target:
                output = chunk.run(self.model)
                scores = row_scores(output, row_target, images, probabilities=True)
            totals.index_add_(0, pair, scores.double())
        return scattered(totals / variants, image_index, channel_index, (batch, channels))
