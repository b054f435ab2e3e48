"""Deep Feature Factorization: the torch NMF against scikit-learn's, the pipeline against pytorch-grad-cam's."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import DeepFeatureFactorization as PeerDFF
from sklearn.decomposition import NMF

import camkit
from camkit.ops.nmf import nmf

from ..helpers import layer_output, no_hooks_left, tiny_cnn


def _sklearn(matrix: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's NMF exactly as pytorch-grad-cam calls it."""
    model = NMF(n_components=components, init="random", random_state=0)
    return model.fit_transform(matrix), model.components_


@pytest.mark.parametrize("components", [3, 8])
def test_torch_nmf_reconstructs_at_least_as_well_as_scikit_learn(components) -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    activations = layer_output(model, model.layer4, torch.randn(3, 3, 64, 96))
    matrix = activations.transpose(0, 1).reshape(512, -1)
    matrix = matrix - matrix.amin(dim=1, keepdim=True)
    weights, codes = nmf(matrix, components)
    assert weights.shape == (512, components) and codes.shape == (components, matrix.shape[1])
    assert bool((weights >= 0).all() and (codes >= 0).all())
    ours = float(torch.linalg.norm(matrix - weights @ codes) / torch.linalg.norm(matrix))
    with mock.patch("warnings.warn"):  # scikit-learn's convergence warning
        sk_weights, sk_codes = _sklearn(matrix.numpy(), components)
    theirs = float(np.linalg.norm(matrix.numpy() - sk_weights @ sk_codes) / np.linalg.norm(matrix.numpy()))
    assert ours <= 1.05 * theirs, (ours, theirs)
    # Leading dimensions are independent problems solved together.
    alone = nmf(matrix, components, iterations=30, tolerance=0.0)
    stacked_weights, stacked_codes = nmf(torch.stack((matrix, matrix.flip(1))), components, iterations=30,
                                         tolerance=0.0)
    torch.testing.assert_close(stacked_weights[0] @ stacked_codes[0], alone[0] @ alone[1], atol=1e-3, rtol=1e-3)
    assert float(torch.linalg.norm(matrix.flip(1) - stacked_weights[1] @ stacked_codes[1])
                 / torch.linalg.norm(matrix)) <= 1.05 * theirs + 0.05


def test_dff_equals_pytorch_grad_cam_given_the_same_factorisation() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 96)
    with mock.patch("camkit.explainers.dff.nmf", side_effect=lambda matrix, n, **_: tuple(
            torch.from_numpy(np.float32(f)) for f in _sklearn(matrix.numpy(), n))):
        ours = camkit.DeepFeatureFactorization(model, "layer4", n_components=4, head="fc").explain(x)
    peer = PeerDFF(model, model.layer4, computation_on_concepts=model.fc)
    try:
        concepts, concept_maps, scores = peer(x, n_components=4)
    finally:
        peer.activations_and_grads.release()
    np.testing.assert_allclose(ours.concept_maps.numpy(), np.stack(concept_maps), atol=2e-3)
    np.testing.assert_allclose(ours.concepts.numpy(), concepts, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.concept_scores.numpy(), scores, rtol=1e-4, atol=1e-4)
    # maps: each image's concept that scores its explained class highest.
    chosen = ours.concept_scores.T[ours.targets].argmax(1)
    torch.testing.assert_close(ours.maps, ours.concept_maps[torch.arange(2), chosen], atol=1e-5, rtol=0)
    assert ours.maps.shape == (2, 64, 96) and no_hooks_left(model)


def test_dff_without_a_head_and_its_checks() -> None:
    model, x = tiny_cnn(), torch.randn(3, 3, 10, 10)
    result = camkit.DeepFeatureFactorization(model, "3", n_components=3).explain(x)
    assert result.concept_maps.shape == (3, 3, 10, 10) and result.concepts.shape == (8, 3)
    assert result.concept_scores is None and float(result.concept_maps.min()) >= 0
    assert float(result.concept_maps.max()) <= 1 and torch.isfinite(result.maps).all()
    assert bool((result.concepts >= 0).all())  # a ReLU layer: shifted by a non-negative minimum
    fused = camkit.DeepFeatureFactorization(model, ["1", "3"], n_components=2).explain(x)
    assert fused.maps.shape == (3, 10, 10) and fused.concepts.shape == (8, 2)
    augmented = camkit.DeepFeatureFactorization(model, "3", n_components=2, augment=True).explain(x)
    assert augmented.maps.shape == (3, 10, 10) and torch.isfinite(augmented.maps).all()
    with pytest.raises(camkit.CamkitError, match="n_components"):
        camkit.DeepFeatureFactorization(model, "3", n_components=0)


def test_small_cpu_nmf_runs_on_one_thread_and_restores_the_count() -> None:
    from camkit.ops import nmf as nmf_module

    matrix = torch.rand(256, 40)
    seen: list[int] = []
    original = nmf_module._hals_columns

    def watched(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with mock.patch.object(nmf_module, "_hals_columns", watched):
            weights, codes = nmf(matrix, 4)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        pooled = nmf_module._factorised(matrix, 4, 200, 1e-4)  # the same sweeps on the pool
        ours, theirs = (float(torch.linalg.norm(matrix - w @ h)) for w, h in ((weights, codes), pooled))
        assert abs(ours - theirs) <= 1e-4 * theirs
    finally:
        torch.set_num_threads(threads)
