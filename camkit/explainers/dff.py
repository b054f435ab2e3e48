"""Deep Feature Factorization: the layer's activations over the whole batch factorised into non-negative concepts."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ..calls import InputsSpec, ModelCall
from ..capture import Capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec, find_layer
from ..ops.maps import normalised_at_size
from ..ops.nmf import nmf
from ..results import Explanation, FactorizationExplanation
from ..targets import TargetSpec
from .base import Explainer
from .registry import register


@dataclass
class FactorizedCapture(Capture):
    """A capture with its factorisation: concepts ``(K, n)``, codes ``(B, n, *grid)``, head scores ``(n, classes)``."""

    concepts: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    concept_scores: torch.Tensor | None = None


@register(
    "deepfeaturefactorization",
    paper="Collins et al., Deep Feature Factorization For Concept Discovery, ECCV 2018 (arXiv:1806.10206)",
)
class DeepFeatureFactorization(Explainer):
    """NMF of the activations, channels x (images * positions), into ``n_components`` shared concepts.

    As pytorch-grad-cam: each channel is shifted by its minimum over the batch
    so the matrix is non-negative, A - min = W H; the concepts are W plus
    that shift (activation space, so a classifier head can score them), the
    concept maps the rows of H per image. ``head``: a module (or its name)
    mapping ``(n, K)`` concept embeddings to class scores, e.g. the model's
    last ``nn.Linear`` after global pooling. The NMF runs on the device
    (:func:`camkit.ops.nmf.nmf`, HALS, ``iterations``). ``explain(x)`` returns a
    :class:`camkit.results.FactorizationExplanation`; ``camkit.viz.factorization_figure``
    draws it. Several target layers are factorised each on its own and their
    chosen maps fused; the concepts reported are the first layer's. With
    ``augment`` the copies are factorised together in one pass and the result
    holds no concepts.
    """

    uses_gradients = False
    class_specific = False  # with a head, the map is the explained class's concept: True for that instance

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        n_components: int = 5,
        head: str | nn.Module | None = None,
        iterations: int = 200,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise CamkitError(f"n_components must be a positive int, got {n_components!r}.")
        if head is not None and not isinstance(head, (str, nn.Module)):
            raise CamkitTypeError(f"head must be a module, its name, or None; got {type(head).__name__}.")
        self.head = find_layer(model, head)[1] if isinstance(head, str) else head
        self.n_components, self.iterations = n_components, iterations
        self.class_specific = self.head is not None

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        return [self._factorised(captured) for captured in super().capture(call, target)]

    def images_per_pass(self, batch: int) -> int:
        return sys.maxsize  # augmented copies: one pass, one factorisation of them all

    def _factorised(self, captured: Capture) -> FactorizedCapture:
        activations = captured.activations
        batch, channels = activations.shape[:2]
        matrix = activations.transpose(0, 1).reshape(channels, -1)
        shift = matrix.amin(dim=1, keepdim=True)
        weights, codes = nmf(matrix - shift, self.n_components, iterations=self.iterations)
        concepts = weights + shift
        scores = None
        if self.head is not None:
            with torch.no_grad():
                scores = self.head(concepts.T.to(_dtype_of(self.head))).float()
        grid = activations.shape[2:]
        codes = codes.reshape(self.n_components, batch, *grid).transpose(0, 1)
        return FactorizedCapture(
            **{f.name: getattr(captured, f.name) for f in fields(Capture)},
            concepts=concepts,
            codes=codes,
            concept_scores=scores,
        )

    def layer_map(self, captured: Capture) -> torch.Tensor:
        if not isinstance(captured, FactorizedCapture) or captured.codes is None or captured.concepts is None:
            raise CamkitError("Deep Feature Factorization's maps come from its own capture step; call the explainer.")
        codes, concepts = captured.codes, captured.concepts
        if captured.concept_scores is not None and captured.classes is not None:
            chosen = captured.concept_scores.T[captured.classes].argmax(dim=1)
        else:  # the concept carrying the most of each image's activations: ||w_j|| * sum over positions of h_j
            energy = concepts.norm(dim=0) * codes.flatten(2).sum(dim=2)
            chosen = energy.argmax(dim=1)
        return codes[torch.arange(codes.shape[0], device=codes.device), chosen]

    def explain(self, x: torch.Tensor, target: TargetSpec = None, *, inputs: InputsSpec = None) -> Explanation:
        """A :class:`FactorizationExplanation`; a plain :class:`Explanation` under ``augment=`` (see ``_explanation``)."""
        return super().explain(x, target, inputs=inputs)

    def _explanation(
        self,
        images: torch.Tensor,
        maps: torch.Tensor,
        layer_maps: torch.Tensor,
        captured: Capture,
        channel_weights: torch.Tensor | None = None,
    ) -> Explanation:
        plain = super()._explanation(images, maps, layer_maps, captured, channel_weights)
        if not isinstance(captured, FactorizedCapture) or captured.codes is None:
            return plain  # augmented copies: their concepts belong to no one image
        batch, count = captured.codes.shape[:2]
        concept_maps = normalised_at_size(captured.codes.flatten(0, 1), tuple(images.shape[2:]))
        return FactorizationExplanation(
            **asdict_shallow(plain),
            concept_maps=concept_maps.reshape(batch, count, *images.shape[2:]),
            concepts=captured.concepts,
            concept_scores=captured.concept_scores,
        )


def asdict_shallow(result: Explanation) -> dict[str, Any]:
    """An explanation's fields without copying its tensors (``dataclasses.asdict`` deep-copies)."""
    return {f.name: getattr(result, f.name) for f in fields(result)}


def _dtype_of(module: nn.Module) -> torch.dtype:
    parameter = next(module.parameters(), None)
    return parameter.dtype if parameter is not None else torch.float32
