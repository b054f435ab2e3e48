"""Faithfulness, localisation and sanity-check metrics, batched in torch on the model's device.

Every function returns one value per image, a ``(B,)`` tensor; the mean over a
data set is the caller's one-liner. Maps are ``(B, H, W)`` in [0, 1] at the
input's size, masks ``(B, H, W)`` bool.
"""
from __future__ import annotations

from .faithfulness import average_drop, deletion, increase_in_confidence, insertion
from .localisation import boxes_to_masks, energy_pointing_game, pointing_game
from .sanity import class_sensitivity, model_randomisation, pearson, spearman

__all__ = [
    "average_drop", "boxes_to_masks", "class_sensitivity", "deletion", "energy_pointing_game",
    "increase_in_confidence", "insertion", "model_randomisation", "pearson", "pointing_game", "spearman",
]
