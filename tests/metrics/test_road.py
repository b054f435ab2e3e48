"""ROAD against pytorch-grad-cam's ROAD metrics (noise off), plus its seeded noise, fixed baselines and volumes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import camkit
from camkit import metrics
from camkit.metrics.road import removal_masks
from camkit.ops.imputation import linear_imputation

from ..helpers import forward_batch_sizes, tiny_cnn, tiny_cnn3d

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, list[int]]:
    """A tiny CNN with larger weights than its default init, so that removing pixels moves the probabilities by percents."""
    generator = torch.Generator().manual_seed(11)
    model = tiny_cnn()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    x = torch.randn(4, 3, 16, 16, generator=generator)
    coarse = torch.rand(4, 1, 4, 4, generator=generator)
    maps = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    maps = (maps - maps.amin(dim=(1, 2), keepdim=True)) / (maps.amax(dim=(1, 2), keepdim=True)
                                                          - maps.amin(dim=(1, 2), keepdim=True))
    return model, x, maps, [1, 2, 3, 4]


@pytest.fixture
def noiseless_peer(monkeypatch):
    """pytorch-grad-cam's ROAD module with its imputer's noise switched off (the averagers build their own imputers)."""
    from pytorch_grad_cam.metrics import road as peer

    monkeypatch.setattr(peer.NoisyLinearImputer.__init__, "__defaults__", (0.0, peer.neighbors_weights))
    return peer


def test_the_five_variants_match_pytorch_grad_cam(case, noiseless_peer) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, maps, classes = case
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    peer = noiseless_peer

    def theirs(peer_metric) -> torch.Tensor:
        return torch.as_tensor(peer_metric(x, maps.numpy(), targets, model))

    single_most, single_least = theirs(peer.ROADMostRelevantFirst(70)), theirs(peer.ROADLeastRelevantFirst(30))
    torch.testing.assert_close(metrics.road_most_relevant_first(model, x, maps, classes, percentile=70, noise=0),
                               single_most, atol=1e-6, rtol=0)
    torch.testing.assert_close(metrics.road_least_relevant_first(model, x, maps, classes, percentile=30, noise=0),
                               single_least, atol=1e-6, rtol=0)
    most, least = theirs(peer.ROADMostRelevantFirstAverage()), theirs(peer.ROADLeastRelevantFirstAverage())
    torch.testing.assert_close(metrics.road_most_relevant_first_average(model, x, maps, classes, noise=0), most,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(metrics.road_least_relevant_first_average(model, x, maps, classes, noise=0), least,
                               atol=1e-6, rtol=0)
    # pytorch-grad-cam's ROADCombined is exactly (LeRF average - MoRF average) / 2 of the two above.
    torch.testing.assert_close(metrics.road_combined(model, x, maps, classes, noise=0), (least - most) / 2,
                               atol=1e-6, rtol=0)
    for scores in (single_most, single_least, most, least):
        assert scores.abs().max() > 1e-2  # the scores are not all ~0: the comparison means something


def test_imputed_images_match_pytorch_grad_cams(case, noiseless_peer) -> None:
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, maps, classes = case
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    for order, removal in (("morf", noiseless_peer.RemoveMostRelevantFirst), ("lerf", noiseless_peer.RemoveLeastRelevantFirst)):
        for percentile in (10, 50, 90):
            peer_metric = PerturbationConfidenceMetric(removal(percentile, noiseless_peer.NoisyLinearImputer()))
            _, theirs = peer_metric(x, maps.numpy(), targets, model, return_visualization=True)
            ours = linear_imputation(x, removal_masks(maps, order, [percentile])[0])
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_callable_target_scores_what_it_returns(case, noiseless_peer) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, maps, classes = case
    chosen = torch.tensor(classes)
    peer_metric = noiseless_peer.ROADCombined(percentiles=[30, 70])
    theirs = torch.as_tensor(peer_metric(x, maps.numpy(), [ClassifierOutputTarget(c) for c in classes], model))
    sizes, stop = forward_batch_sizes(model)
    try:
        ours = metrics.road_combined(model, x, maps, lambda out: out.gather(1, chosen[:, None]).squeeze(1),
                                     percentiles=[30, 70], noise=0)
    finally:
        stop()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert set(sizes) == {4}  # the callable always sees the whole batch, in order


def test_noise_is_seeded_and_independent_of_chunking(case) -> None:
    model, x, maps, classes = case
    first = metrics.road(model, x, maps, classes, percentiles=[20, 60], seed=3, chunk_size=64)
    # Same noise; the solver may stop a few iterations apart when its batch differs, hence not bit-equal.
    torch.testing.assert_close(first, metrics.road(model, x, maps, classes, percentiles=[20, 60], seed=3, chunk_size=3),
                               atol=1e-6, rtol=0)
    assert not torch.equal(first, metrics.road(model, x, maps, classes, percentiles=[20, 60], seed=4))
    noiseless = metrics.road(model, x, maps, classes, percentiles=[20, 60], noise=0)
    assert 0 < (first - noiseless).abs().max() < 0.05
    # The combined run draws the same noise per (order, percentile) as the single-order runs.
    combined = metrics.road_combined(model, x, maps, classes, percentiles=[20, 60], seed=3)
    most = metrics.road_most_relevant_first_average(model, x, maps, classes, percentiles=[20, 60], seed=3)
    least = metrics.road_least_relevant_first_average(model, x, maps, classes, percentiles=[20, 60], seed=3)
    torch.testing.assert_close(combined, (least - most) / 2)


def test_a_fixed_baseline_replaces_the_removed_pixels(case) -> None:
    model, x, maps, classes = case
    removed = removal_masks(maps, "morf", [60])[0]
    with torch.no_grad():
        probabilities = model(torch.where(removed[:, None], 0.0, x)).softmax(dim=1)[torch.arange(4), classes]
    for baseline in ("zero", torch.zeros(3, 1, 1), lambda images: torch.zeros_like(images[:, :, :1, :1])):
        after = metrics.road(model, x, maps, classes, percentiles=[60], baseline=baseline, difference=False)[:, 0]
        torch.testing.assert_close(after, probabilities)


def test_volumes_are_imputed_and_scored() -> None:
    model = tiny_cnn3d()
    volumes = torch.randn(2, 1, 6, 8, 8)
    maps = torch.rand(2, 6, 8, 8)
    scores = metrics.road(model, volumes, maps, [0, 1], percentiles=[30, 70], noise=0, difference=False)
    removed = removal_masks(maps, "morf", [70])[0]
    with torch.no_grad():
        by_hand = model(linear_imputation(volumes, removed)).softmax(dim=1)[torch.arange(2), torch.tensor([0, 1])]
    torch.testing.assert_close(scores[:, 1], by_hand)
    assert removed.float().mean(dim=(1, 2, 3)).tolist() == pytest.approx([0.3, 0.3], abs=1 / 384)


def test_bad_arguments_are_clear_errors(case) -> None:
    model, x, maps, classes = case
    with pytest.raises(camkit.CamkitError, match="order must be 'morf'"):
        metrics.road(model, x, maps, order="random")
    with pytest.raises(camkit.CamkitError, match=r"percentiles must be .* in \[0, 100\]"):
        metrics.road(model, x, maps, percentiles=[50, 120])
    with pytest.raises(camkit.CamkitError, match=r"maps must have shape \(B, H, W\)"):
        metrics.road_combined(model, x, maps[:, :8])
    with pytest.raises(camkit.CamkitError, match=r"maps must have shape \(B, D, H, W\)"):
        metrics.road_combined(tiny_cnn3d(), torch.rand(2, 1, 4, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(camkit.CamkitError, match="baseline must be"):
        metrics.road(model, x, maps, baseline="nearest")
