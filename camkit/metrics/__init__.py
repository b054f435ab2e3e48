"""Faithfulness, localisation and sanity-check metrics, batched in torch on the model's device.

Every function returns one value per image, a ``(B,)`` tensor; the mean over a
data set is the caller's one-liner, or a :class:`Running` accumulator's over
many batches. Maps are ``(B, H, W)`` in [0, 1] at the input's size (``(B, D, H, W)``
for volumes), masks ``(B, H, W)`` bool.
"""

from __future__ import annotations

from .boxes import (
    box_iou,
    boxes_from_maps,
    cam_thresholds,
    localisation_accuracy,
    max_box_accuracy,
    pixel_average_precision,
)
from .complexity import complexity, l1_complexity, sparseness
from .faithfulness import average_drop, deletion, increase_in_confidence, insertion
from .localisation import (
    attribution_localisation,
    boxes_to_masks,
    energy_pointing_game,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from .road import (
    road,
    road_combined,
    road_least_relevant_first,
    road_least_relevant_first_average,
    road_most_relevant_first,
    road_most_relevant_first_average,
)
from .robustness import (
    adcc,
    arcc,
    avg_sensitivity,
    coherency,
    gradient_noise_stability,
    local_lipschitz_estimate,
    max_sensitivity,
)
from .running import (
    Running,
    RunningFaithfulness,
    RunningLocalisation,
    RunningMaxBoxAccuracy,
    RunningPixelAveragePrecision,
)
from .sanity import class_sensitivity, model_randomisation, pearson, spearman

__all__ = [
    "Running",
    "RunningFaithfulness",
    "RunningLocalisation",
    "RunningMaxBoxAccuracy",
    "RunningPixelAveragePrecision",
    "adcc",
    "arcc",
    "attribution_localisation",
    "average_drop",
    "avg_sensitivity",
    "box_iou",
    "boxes_from_maps",
    "boxes_to_masks",
    "cam_thresholds",
    "class_sensitivity",
    "coherency",
    "complexity",
    "deletion",
    "energy_pointing_game",
    "gradient_noise_stability",
    "increase_in_confidence",
    "insertion",
    "l1_complexity",
    "local_lipschitz_estimate",
    "localisation_accuracy",
    "max_box_accuracy",
    "max_sensitivity",
    "model_randomisation",
    "pearson",
    "pixel_average_precision",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "road_combined",
    "road_least_relevant_first",
    "road_least_relevant_first_average",
    "road_most_relevant_first",
    "road_most_relevant_first_average",
    "sparseness",
    "spearman",
    "top_k_intersection",
]
