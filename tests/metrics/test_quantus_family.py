"""Quantus-compatible complexity and localisation metrics, per image against Quantus 0.6 itself."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from camkit import metrics

from ..helpers import blob_maps

quantus = pytest.importorskip("quantus")


def _maps_and_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """CAM-like maps (ties only at 0 and 1, none at any cut), masks from other maps, one empty mask."""
    maps = blob_maps(6, 20, seed=1) * 0.999 + 1e-4 * torch.rand(6, 20, 20)
    maps[2] = maps[2].clamp_min(0.5) - 0.5  # a ReLU'd map: a plateau of zeros
    masks = blob_maps(6, 20, seed=2) > 0.55
    masks[4] = False
    return maps, masks


def _quantus(metric, maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    x = np.random.default_rng(0).random((maps.shape[0], 3, *maps.shape[1:])).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(maps.shape[0], dtype=int),
                                 a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy().astype(float),
                                 batch_size=maps.shape[0]), dtype=np.float64)


CASES = [
    (lambda: quantus.Sparseness(disable_warnings=True), lambda m, s: metrics.sparseness(m)),
    (lambda: quantus.Complexity(disable_warnings=True), lambda m, s: metrics.complexity(m)),
    (lambda: quantus.RelevanceMassAccuracy(disable_warnings=True), metrics.relevance_mass_accuracy),
    (lambda: quantus.RelevanceRankAccuracy(disable_warnings=True), metrics.relevance_rank_accuracy),
    (lambda: quantus.AttributionLocalisation(disable_warnings=True), metrics.attribution_localisation),
    (lambda: quantus.AttributionLocalisation(positive_attributions=True, disable_warnings=True),
     lambda m, s: metrics.attribution_localisation(m, s, positive_attributions=True)),
    (lambda: quantus.TopKIntersection(k=50, disable_warnings=True), lambda m, s: metrics.top_k_intersection(m, s, k=50)),
    (lambda: quantus.TopKIntersection(k=30, concept_influence=True, disable_warnings=True),
     lambda m, s: metrics.top_k_intersection(m, s, k=30, concept_influence=True)),
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_equals_quantus_per_image(index: int) -> None:
    make_reference, ours = CASES[index]
    maps, masks = _maps_and_masks()
    reference = _quantus(make_reference(), maps, masks)
    values = ours(maps, masks)
    assert values.shape == (maps.shape[0],)
    np.testing.assert_allclose(values.numpy(), reference, atol=1e-4, rtol=0)


def test_hand_computed_values() -> None:
    one_hot = torch.zeros(1, 2, 2)
    one_hot[0, 0, 0] = 1.0
    uniform = torch.ones(1, 2, 2)
    # Gini: concentrated on one of n pixels -> (n - 1) / n; uniform -> 0.  Entropy: 0 and log(n).
    assert float(metrics.sparseness(one_hot)) == pytest.approx(0.75, abs=1e-6)
    assert float(metrics.sparseness(uniform)) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics.complexity(one_hot)) == pytest.approx(0.0, abs=1e-9)
    assert float(metrics.complexity(uniform)) == pytest.approx(np.log(4), abs=1e-9)
    mask = torch.tensor([[[True, False], [False, False]]])
    ramp = torch.tensor([[[0.4, 1.0], [0.2, 0.0]]])
    assert float(metrics.relevance_mass_accuracy(ramp, mask)) == pytest.approx(0.4 / 1.6)
    assert float(metrics.relevance_rank_accuracy(ramp, mask)) == 0.0  # the mask's pixel is not the top one
    assert float(metrics.top_k_intersection(ramp, mask, k=2)) == 0.5
    assert float(metrics.l1_complexity(uniform * 0.5)) == 0.5


def test_highest_takes_ties_in_row_major_order_on_both_paths() -> None:
    """numpy selection (CPU floats) and topk (other dtypes, the accelerator path) pick the same pixels."""
    from camkit.metrics.localisation import highest

    generator = torch.Generator().manual_seed(4)
    values = torch.randint(0, 5, (6, 40), generator=generator)  # many ties
    counts = torch.tensor([0, 1, 7, 20, 39, 40])
    order = torch.sort(-values, dim=1, stable=True).indices
    expected = torch.zeros_like(values, dtype=torch.bool)
    for row, count in enumerate(counts.tolist()):
        expected[row, order[row, :count]] = True
    assert torch.equal(highest(values.float(), counts), expected)  # numpy path
    assert torch.equal(highest(values, counts), expected)  # topk path
