"""Test-time augmentation for ``augment=True``: flipped and intensity-scaled copies, maps mapped back and averaged.

As pytorch-grad-cam's ``aug_smooth`` (ttach's ``HorizontalFlip`` x
``Multiply(0.9, 1, 1.1)``): its "rescales" multiply the pixel values, they do
not resize the image, so every copy keeps the input's grid and all copies of
all images run as one batch through one forward and one backward.
"""

from __future__ import annotations

import torch

INTENSITY_FACTORS = (0.9, 1.0, 1.1)
FLIPS = (False, True)
COPIES = len(FLIPS) * len(INTENSITY_FACTORS)
# Copy-major order: rows [c * B, (c + 1) * B) hold copy c; copy 0 is the image itself.
IDENTITY_COPY = 0


def _copy_plan() -> list[tuple[bool, float]]:
    plan = [(flip, factor) for flip in FLIPS for factor in INTENSITY_FACTORS]
    plan.remove((False, 1.0))
    return [(False, 1.0), *plan]


def augmented_batch(x: torch.Tensor) -> torch.Tensor:
    """``(COPIES * B, C, ...)``: every copy of every image, copy-major, the unchanged image first."""
    copies = [(x.flip(-1) if flip else x) * factor for flip, factor in _copy_plan()]
    return torch.cat(copies, dim=0)


def merged_maps(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """Maps of the copies ``(COPIES * B, *size)``, flipped back and averaged, ``(B, *size)``."""
    per_copy = maps.reshape(COPIES, batch, *maps.shape[1:])
    flips = torch.tensor([flip for flip, _ in _copy_plan()], device=maps.device)
    unflipped = torch.where(flips.reshape(COPIES, *([1] * (per_copy.dim() - 1))), per_copy.flip(-1), per_copy)
    return unflipped.mean(dim=0)


def identity_rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """The rows of a copy-major tensor that belong to the unchanged images."""
    return tensor[IDENTITY_COPY * batch : (IDENTITY_COPY + 1) * batch]
