"""camkit.cluster.dbscan against scikit-learn's DBSCAN."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_blobs

from camkit.cluster import dbscan, pairwise_distances


def assert_same_as_sklearn(points: np.ndarray, labels: np.ndarray, eps: float, min_samples: int) -> None:
    """Same core points, same partition of them, same noise; borders in a core neighbour's cluster."""
    reference = DBSCAN(eps=eps, min_samples=min_samples).fit(points)
    expected = reference.labels_
    core = np.zeros(len(points), dtype=bool)
    core[reference.core_sample_indices_] = True
    np.testing.assert_array_equal(labels == -1, expected == -1, err_msg="noise points differ")
    # the partition of the core points: a bijection between cluster ids
    pairs = set(zip(labels[core].tolist(), expected[core].tolist()))
    assert len(pairs) == len(set(labels[core].tolist())) == len(set(expected[core].tolist()))
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    for border in np.flatnonzero(~core & (expected != -1)):
        neighbour_labels = set(labels[core & (distances[border] <= eps)].tolist())
        assert labels[border] in neighbour_labels
    # clusters numbered by their lowest-index core point, like scikit-learn
    firsts = [np.flatnonzero(core & (labels == c))[0] for c in range(labels.max() + 1)]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dims", [2, 64])
def test_blobs(seed: int, dims: int) -> None:
    std, eps = (0.5, 0.4) if dims == 2 else (1.0, 11.5)
    points, _ = make_blobs(400, n_features=dims, centers=5, cluster_std=std, random_state=seed)
    labels = dbscan(torch.tensor(points), eps, 5).numpy()
    assert labels.max() >= 1
    assert_same_as_sklearn(points, labels, eps, 5)


def test_pure_noise_one_cluster_and_min_samples_one() -> None:
    points = np.random.default_rng(0).uniform(size=(200, 3))
    assert (dbscan(torch.tensor(points), 1e-3, 3).numpy() == -1).all()
    assert (dbscan(torch.tensor(points), 10.0, 3).numpy() == 0).all()
    labels = dbscan(torch.tensor(points), 0.05, 1).numpy()  # every point is core
    assert_same_as_sklearn(points, labels, 0.05, 1)


def test_duplicates_and_exact_boundary() -> None:
    grid = np.array([[i, j] for i in range(6) for j in range(3)], dtype=np.float64)
    points = np.concatenate([grid, grid[:4], [[20.0, 20.0]] * 3])
    for min_samples in (2, 3, 4, 5):
        # points exactly eps = 1 apart are neighbours (<=), as in scikit-learn
        labels = dbscan(torch.tensor(points, dtype=torch.float32), 1.0, min_samples).numpy()
        assert_same_as_sklearn(points, labels, 1.0, min_samples)


def test_fewer_points_than_min_samples_and_empty() -> None:
    points = torch.zeros(3, 2)
    assert dbscan(points, 0.5, 4).tolist() == [-1, -1, -1]
    assert dbscan(points, 0.5, 3).tolist() == [0, 0, 0]
    assert dbscan(torch.zeros(2, 0, 5), 0.5, 2).shape == (2, 0)


def test_per_item_eps_and_min_samples_in_one_batch() -> None:
    points = [make_blobs(150, n_features=4, centers=3, random_state=s)[0] for s in range(3)]
    batch = torch.tensor(np.stack(points))
    eps = torch.tensor([0.8, 1.5, 3.0])
    min_samples = torch.tensor([3, 5, 8])
    labels = dbscan(batch, eps, min_samples).numpy()
    for item in range(3):
        assert_same_as_sklearn(points[item], labels[item], float(eps[item]), int(min_samples[item]))


def test_valid_mask_equals_clustering_the_subset() -> None:
    points, _ = make_blobs(300, n_features=3, centers=4, random_state=5)
    rng = np.random.default_rng(1)
    valid = rng.uniform(size=(2, 300)) < 0.6
    labels = dbscan(torch.tensor(np.stack([points, points])), 1.0, 4, valid=torch.tensor(valid)).numpy()
    for item in range(2):
        assert (labels[item][~valid[item]] == -1).all()
        assert_same_as_sklearn(points[valid[item]], labels[item][valid[item]], 1.0, 4)


def test_chunking_and_precomputed_distances_give_the_same_labels() -> None:
    batch = torch.tensor(np.stack([make_blobs(120, centers=3, random_state=s)[0] for s in range(5)]))
    expected = dbscan(batch, 1.0, 4)
    torch.testing.assert_close(dbscan(batch, 1.0, 4, chunk_elements=1), expected)
    torch.testing.assert_close(dbscan(batch, 1.0, 4, distances=pairwise_distances(batch)), expected)


def test_large_single_item() -> None:
    points, _ = make_blobs(4096, n_features=8, centers=6, random_state=3)
    labels = dbscan(torch.tensor(points, dtype=torch.float32), 1.5, 10).numpy()
    assert_same_as_sklearn(points.astype(np.float32).astype(np.float64), labels, 1.5, 10)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        dbscan(torch.zeros(5), 1.0, 2)
    with pytest.raises(TypeError, match="floating"):
        dbscan(torch.zeros(5, 2, dtype=torch.long), 1.0, 2)
    with pytest.raises(ValueError, match="eps"):
        dbscan(torch.zeros(5, 2), 0.0, 2)
    with pytest.raises(ValueError, match="min_samples"):
        dbscan(torch.zeros(5, 2), 1.0, 0)
    with pytest.raises(ValueError, match="one value per batch item"):
        dbscan(torch.zeros(2, 5, 2), torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="NaN"):
        dbscan(torch.tensor([[float("nan"), 0.0]]), 1.0, 1)
