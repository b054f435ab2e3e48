"""PairwiseDistances: float32 speed, float64 answers; against direct float64 differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit.ops.dbscan as dbscan_module
from camkit.cluster import dbscan
from camkit.ops.distances import PairwiseDistances, row_counts
from camkit.ops.quantiles import pair_quantile


def direct_distances(points: torch.Tensor) -> torch.Tensor:
    wide = points.double()
    return ((wide[:, :, None] - wide[:, None]) ** 2).sum(-1).sqrt()


def near_duplicates(batch: int = 3, count: int = 300, dims: int = 49, seed: int = 0) -> torch.Tensor:
    """Post-ReLU-like points far from the origin, many pairs ~1e-4 of their norm apart: float32's Gram formula flips them."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, count // 3, dims, generator=generator) * 50 + 100
    copies = centres.repeat(1, 3, 1) + torch.randn(batch, count // 3 * 3, dims, generator=generator) * 1e-2
    return copies.float()


@pytest.mark.parametrize("seed", [0, 1])
def test_within_equals_direct_float64_comparison(seed: int) -> None:
    points = near_duplicates(seed=seed)
    exact = direct_distances(points)
    # radii at actual pair distances: the hardest case for a float32 comparison
    radius = exact[:, 0, 1:].median(dim=1).values
    within = PairwiseDistances(points).within(radius)
    assert torch.equal(within, exact <= radius[:, None, None])
    assert torch.equal(within, within.transpose(1, 2))
    # The plain float32 Gram formula gets some of them wrong: the case is a real one.
    norms = points.pow(2).sum(-1)
    gram = norms[:, :, None] + norms[:, None] - 2 * points @ points.transpose(1, 2)
    assert not torch.equal(gram.clamp_min(0).sqrt() <= radius.float()[:, None, None], exact <= radius[:, None, None])


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.999, 1.0])
def test_pair_quantile_equals_numpy_percentile(q: float) -> None:
    points = near_duplicates(count=240, seed=2)
    valid = torch.ones(points.shape[:2], dtype=torch.bool)
    valid[1, 200:] = False  # an item with fewer points
    got = pair_quantile(PairwiseDistances(points, valid), valid, q)
    exact = direct_distances(points).numpy()
    for item in range(points.shape[0]):
        members = valid[item].numpy()
        block = exact[item][np.ix_(members, members)]
        expected = np.percentile(block[~np.eye(len(block), dtype=bool)], 100 * q)
        assert got[item].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_quantile_of_degenerate_sets() -> None:
    points = torch.zeros(2, 5, 3)
    valid = torch.tensor([[True] * 5, [True] + [False] * 4])
    assert pair_quantile(PairwiseDistances(points, valid), valid, 0.25).tolist() == [0.0, 0.0]


def test_order_statistics_fall_back_when_the_sample_misleads(monkeypatch) -> None:
    points = near_duplicates(count=150, seed=3)
    valid = torch.ones(points.shape[:2], dtype=torch.bool)
    expected = pair_quantile(PairwiseDistances(points, valid), valid, 0.25)
    monkeypatch.setattr("camkit.ops.distances.SAMPLE_SIZE", 4)  # a useless bracket: every item is redone in full
    assert torch.equal(pair_quantile(PairwiseDistances(points, valid), valid, 0.25), expected)


def test_row_counts_in_every_layout() -> None:
    for shape in [(2, 5, 8), (3, 7, 1536), (1, 3, 2048 * 8 + 8), (2, 3, 13)]:
        mask = torch.rand(shape) < 0.7
        assert torch.equal(row_counts(mask), mask.sum(2))
    full = torch.ones(1, 2, 4096 * 8, dtype=torch.bool)  # every byte lane at its limit
    assert torch.equal(row_counts(full), full.sum(2))


def test_root_graph_and_propagation_give_the_same_labels(monkeypatch) -> None:
    from sklearn.datasets import make_blobs

    batch = torch.tensor(np.stack([make_blobs(200, n_features=6, centers=5, random_state=s)[0] for s in range(4)]))
    merged = dbscan(batch, 2.5, 4)
    monkeypatch.setattr(dbscan_module, "_product_dtype", lambda _device: torch.float32)  # CPUs without native bf16
    assert torch.equal(dbscan(batch, 2.5, 4), merged)
    monkeypatch.setattr(dbscan_module, "MAX_ROOTS", 0)
    assert torch.equal(dbscan(batch, 2.5, 4), merged)
    assert int(merged.max()) >= 2
