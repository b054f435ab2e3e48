"""Deep Feature Factorization's picture: every concept in its own colour over the image, with its top classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import CamkitError
from ..ops.images import display_images
from ..results import FactorizationExplanation
from .figures import _figure_class

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def concept_colours(count: int) -> torch.Tensor:
    """``(count, 3)`` RGB in [0, 1]: matplotlib's gist_rainbow at 0, 1/count, ... (the DFF authors' and pytorch-grad-cam's)."""
    import matplotlib

    rainbow = matplotlib.colormaps["gist_rainbow"]
    return torch.tensor([rainbow(index / count)[:3] for index in range(count)], dtype=torch.float32)


def factorization_overlay(
    images: torch.Tensor, concept_maps: torch.Tensor, colours: torch.Tensor, image_weight: float = 0.3
) -> torch.Tensor:
    """``(B, 3, H, W)``: each pixel in the colour of its strongest concept, as bright as that concept's map.

    As pytorch-grad-cam's ``show_factorization_on_image``: the colour's HSV
    value is replaced by the map's (the colour scaled by map / max channel),
    and the image blended in with ``image_weight``. Batched on the maps' device.
    """
    strength, strongest = concept_maps.max(dim=1)  # (B, H, W)
    palette = colours.to(concept_maps.device)
    palette = palette / palette.amax(dim=1, keepdim=True).clamp_min(1e-12)
    painted = palette[strongest].permute(0, 3, 1, 2) * strength[:, None]
    return image_weight * images.to(painted) + (1 - image_weight) * painted


def concept_labels(scores: torch.Tensor | None, class_names: Sequence[str] | None, top_k: int = 2) -> list[str]:
    """One legend entry per concept: its ``top_k`` classes by softmax of the head's scores ("concept j" without a head)."""
    if scores is None:
        return []
    probabilities = scores.float().softmax(dim=1)
    best, classes = probabilities.topk(min(top_k, scores.shape[1]), dim=1)
    labels = []
    for row_probabilities, row_classes in zip(best.tolist(), classes.tolist()):
        names = [
            class_names[c] if class_names is not None and c < len(class_names) else f"class {c}" for c in row_classes
        ]
        labels.append("\n".join(f"{name}: {p:.2f}" for name, p in zip(names, row_probabilities)))
    return labels


def factorization_figure(
    result: FactorizationExplanation,
    index: int = 0,
    *,
    top_k: int = 2,
    image_weight: float = 0.3,
    class_names: Sequence[str] | None = None,
    panel_size: float = 3.5,
) -> Figure:
    """One image of a Deep Feature Factorization: the image, its concepts in colour, and a legend of their classes."""
    if not isinstance(result, FactorizationExplanation) or result.concept_maps is None:
        raise CamkitError(
            "factorization_figure draws the result of DeepFeatureFactorization(...).explain(x) without augment."
        )
    if not 0 <= index < len(result):
        raise CamkitError(f"index {index} is out of range for a result of {len(result)} images.")
    from matplotlib.patches import Patch

    images = result.display if result.display is not None else display_images(result.images)
    image = images[index : index + 1].detach().float().expand(-1, 3, -1, -1)
    count = result.concept_maps.shape[1]
    colours = concept_colours(count)
    painted = factorization_overlay(image, result.concept_maps[index : index + 1].detach(), colours, image_weight)
    figure = _figure_class()(figsize=(panel_size * 2 + 2.2, panel_size), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, shown, title in zip(axes, (image, painted), ("image", f"{count} concepts @ {result.layer}")):
        axis.imshow(shown[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    labels = concept_labels(result.concept_scores, class_names or result.class_names, top_k)
    labels = labels or [f"concept {j}" for j in range(count)]
    figure.legend(
        handles=[Patch(color=tuple(colours[j].tolist()), label=labels[j]) for j in range(count)],
        loc="outside right center",
        fontsize=8,
    )
    return figure


__all__ = ["concept_colours", "concept_labels", "factorization_figure", "factorization_overlay"]
