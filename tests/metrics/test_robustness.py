"""Robustness and ADCC-family metrics against Quantus 0.6, pytorch-grad-cam and scikit-image, plus their properties."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit import metrics
from camkit.metrics import robustness

from ..helpers import blob_maps, tiny_strided_cnn


def _setup(batch: int = 3, side: int = 24):
    model = tiny_strided_cnn()
    x = torch.randn(batch, 3, side, side)
    return model, x, camkit.GradCAM(model, "3")


def _explain_for_quantus(explainer):
    def explain(model, inputs, targets, **_kwargs):
        return explainer(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]
    return explain


def _pinned_noise(x: torch.Tensor, samples: int, scale: float) -> torch.Tensor:
    return torch.randn(samples, *x.shape, generator=torch.Generator().manual_seed(4)) * scale


def _quantus_perturb(x: torch.Tensor, noise: torch.Tensor):
    """A Quantus perturb_func handing out the pinned copies one sample (step) at a time."""
    step = iter(range(noise.shape[0]))

    def perturb(arr, indices=None, **_kwargs):
        return (x + noise[next(step)]).reshape(arr.shape).numpy()
    return perturb


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate"])
def test_sensitivity_and_lipschitz_equal_quantus(name: str) -> None:
    quantus = pytest.importorskip("quantus")
    model, x, explainer = _setup()
    samples = 3
    noise = _pinned_noise(x, samples, 0.1)
    classes = model(x).argmax(1)
    ours = {"MaxSensitivity": metrics.max_sensitivity, "AvgSensitivity": metrics.avg_sensitivity,
            "LocalLipschitzEstimate": metrics.local_lipschitz_estimate}[name](
        explainer, x, samples=samples, perturb=lambda copies: copies + noise.flatten(0, 1))
    metric = getattr(quantus, name)(nr_samples=samples, perturb_func=_quantus_perturb(x, noise), disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = metric(model=model, x_batch=x.numpy(), y_batch=classes.numpy(),
                           a_batch=explainer(x, classes).numpy()[:, None], explain_func=_explain_for_quantus(explainer),
                           batch_size=x.shape[0], device="cpu")
    np.testing.assert_allclose(ours.numpy(), np.asarray(reference), rtol=1e-4, atol=1e-6)


def test_default_noise_is_seeded_and_batched() -> None:
    _, x, explainer = _setup()
    first = metrics.max_sensitivity(explainer, x, samples=4, seed=1, batch_size=6)
    assert torch.equal(first, metrics.max_sensitivity(explainer, x, samples=4, seed=1, batch_size=64))
    assert not torch.equal(first, metrics.max_sensitivity(explainer, x, samples=4, seed=2))
    average = metrics.avg_sensitivity(explainer, x, samples=4, seed=1)
    assert (average <= first + 1e-12).all() and (first > 0).all()


def test_gradient_noise_stability() -> None:
    model, x, explainer = _setup()
    exact = metrics.gradient_noise_stability(explainer, x, sigma=0.0, samples=2)
    torch.testing.assert_close(exact["spearman"], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(exact["ssim"], torch.ones(3, dtype=torch.float64))
    noisy = metrics.gradient_noise_stability(explainer, x, sigma=1.0, samples=2)
    assert (noisy["ssim"] < 1).all() and (noisy["spearman"] < 1).all()
    # the noise stays inside the call: the explainer afterwards gives the clean maps, the model has no hooks
    torch.testing.assert_close(explainer(x), explainer(x))
    assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())
    # a gradient-free method does not read the gradients
    eigen = metrics.gradient_noise_stability(camkit.EigenCAM(model, "3"), x, sigma=1.0, samples=2)
    torch.testing.assert_close(eigen["ssim"], torch.ones(3, dtype=torch.float64))


def test_ssim_equals_scikit_image() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = blob_maps(2, 20, seed=1), blob_maps(2, 20, seed=2)
    ours = robustness.ssim(a, b)
    for image in range(2):
        reference = skimage_metrics.structural_similarity(a[image].double().numpy(), b[image].double().numpy(),
                                                          data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                          use_sample_covariance=False)
        assert float(ours[image]) == pytest.approx(reference, abs=1e-9)


def test_coherency_equals_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.metrics.arcc import Coherency
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, explainer = _setup()
    classes = model(x).argmax(1)
    maps = explainer(x, classes)
    peer = PeerGradCAM(model=model, target_layers=[model[3]])
    reference = Coherency()(x, maps.numpy(), [ClassifierOutputTarget(int(c)) for c in classes], model, peer)
    np.testing.assert_allclose(metrics.coherency(explainer, x, classes, maps).numpy(), reference, atol=1e-4)


def test_adcc_and_arcc_from_their_terms() -> None:
    model, x, explainer = _setup()
    maps = explainer(x)
    coherence = metrics.coherency(explainer, x, None, maps)
    simplicity = 1 - maps.flatten(1).double().mean(1)
    drop = metrics.average_drop(model, x, maps).double() / 100
    expected = 3 / (1 / coherence + 1 / simplicity + 1 / (1 - drop))
    torch.testing.assert_close(metrics.adcc(explainer, x), expected)
    road = (metrics.road_combined(model, x, maps, percentiles=(20, 40, 60, 80)).double() * 2).clamp(0, 1)
    expected = 3 / (1 / (coherence + 1e-8) + 1 / (simplicity + 1e-8) + 1 / (road + 1e-8))
    torch.testing.assert_close(metrics.arcc(explainer, x), expected)


def test_per_image_seeds_make_values_independent_of_the_batch() -> None:
    _, x, explainer = _setup(batch=4)
    seeds = torch.tensor([11, 12, 13, 14])
    whole = metrics.max_sensitivity(explainer, x, samples=2, seed=seeds)
    halves = torch.cat([metrics.max_sensitivity(explainer, x[i : i + 2], samples=2, seed=seeds[i : i + 2])
                        for i in (0, 2)])
    torch.testing.assert_close(whole, halves)
    whole = metrics.gradient_noise_stability(explainer, x, sigma=0.5, samples=2, seed=seeds)["ssim"]
    halves = torch.cat([metrics.gradient_noise_stability(explainer, x[i : i + 2], sigma=0.5, samples=2,
                                                         seed=seeds[i : i + 2])["ssim"] for i in (0, 2)])
    torch.testing.assert_close(whole, halves)


@pytest.mark.parametrize("metric", ["max_sensitivity", "local_lipschitz_estimate", "coherency"])
def test_one_callable_per_image_equals_the_classes_it_picks(metric: str) -> None:
    """pytorch-grad-cam's per-image target callables: each perturbed copy is scored by its own image's callable."""
    torch.manual_seed(0)
    model, x, explainer = _setup(batch=2)
    function = getattr(metrics, metric)
    options = {"samples": 3, "batch_size": 4} if metric != "coherency" else {}  # 4: passes of two copies
    picking = [lambda row: row[1], lambda row: row[3]]
    torch.testing.assert_close(function(explainer, x, picking, **options),
                               function(explainer, x, [1, 3], **options), atol=1e-6, rtol=1e-5)
