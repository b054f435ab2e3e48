"""The rich result of an explanation: maps plus what the model said."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Explanation:
    """Everything one ``explainer.explain(x)`` call produced, all on ``x``'s device.

    ``maps`` is what ``explainer(x)`` returns; ``layer_maps`` are the same maps
    at the target layer's resolution (after ReLU, before upsampling and
    normalisation). ``targets`` holds the explained class of each image (None
    when the target was a callable); ``predictions`` and ``probabilities``
    the model's top class and its softmax probability (None when the model's
    output has no class scores).
    """

    images: torch.Tensor  # (B, C, H, W) the explained input
    maps: torch.Tensor  # (B, H, W) in [0, 1]
    layer_maps: torch.Tensor  # (B, h, w)
    scores: torch.Tensor  # (B,) the explained scores
    targets: torch.Tensor | None  # (B,)
    predictions: torch.Tensor | None  # (B,)
    probabilities: torch.Tensor | None  # (B,)
    method: str
    layer: str

    def __len__(self) -> int:
        return self.maps.shape[0]
