"""CF-CAM against an independent per-image numpy + scikit-learn reference of DESIGN.md's steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.cluster import DBSCAN

import camkit
from camkit.capture import Capture

from ..helpers import reference_capture

CFCAM = camkit.METHODS["cfcam"]


def _same_correlation(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero padding, output the input's size, extra padding after (as torch's 'same')."""
    kh, kw = kernel.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(image, ((top, kh - 1 - top), (left, kw - 1 - left)))
    out = np.zeros_like(image)
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            out[i, j] = (padded[i : i + kh, j : j + kw] * kernel).sum()
    return out


def _authors_kernel(mean_gradient: np.ndarray) -> np.ndarray:
    h, w = mean_gradient.shape
    i, j = np.meshgrid(np.arange(h) - h / 2, np.arange(w) - w / 2, indexing="ij")
    kernel = np.exp(-(i**2 + j**2) / (2 * 5.0**2)) * np.exp(-((mean_gradient - mean_gradient.mean()) ** 2) / (2 * 0.1**2))
    return kernel / (kernel.sum() + 1e-6)


def _gaussian_kernel(sigma: float):
    def kernel(mean_gradient: np.ndarray) -> np.ndarray:
        h, w = mean_gradient.shape
        i, j = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
        values = np.exp(-(i**2 + j**2) / (2 * sigma**2))
        return values / values.sum()

    return kernel


def reference_weights(
    activations: np.ndarray, gradients: np.ndarray, weighting: str = "softmax", kernel=_authors_kernel
) -> np.ndarray:
    """DESIGN.md's CF-CAM weights for one image, step by step, float64."""
    activations, gradients = activations.astype(np.float64), gradients.astype(np.float64)
    channels = activations.shape[0]
    features = activations.reshape(channels, -1)
    norms = np.linalg.norm(features, axis=1)
    important = norms >= np.percentile(norms, 75)
    weights = np.zeros(channels)
    kept = important.copy()
    weights[important] = gradients[important].mean(axis=(1, 2))
    rest = np.flatnonzero(~important)
    if len(rest):
        points = features[rest]
        distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        off_diagonal = distances[~np.eye(len(rest), dtype=bool)]
        eps = max(np.percentile(off_diagonal, 25), 1e-5) if off_diagonal.size else 1e-5
        min_samples = max(2, int(np.floor(0.05 * len(rest))))
        labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(distances).labels_
        for cluster in range(labels.max() + 1):
            members = rest[labels == cluster]
            mean_gradient = gradients[members].mean(axis=0)
            filtered = _same_correlation(mean_gradient, kernel(mean_gradient))
            weights[members] = filtered.mean()
            kept[members] = True
    if weighting == "linear":
        return np.where(kept, weights, 0.0)
    exp = np.where(kept, np.exp(weights - weights[kept].max()), 0.0)
    return exp / exp.sum()


def _structured(batch: int, channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations with channel clusters, all-zero (post-ReLU) channels and a few strong ones."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 4, size * size, generator=generator) * 2
    assignment = torch.randint(0, 4, (batch, channels), generator=generator)
    activations = centres.gather(1, assignment[:, :, None].expand(-1, -1, size * size))
    activations = (activations + 0.05 * torch.randn(batch, channels, size * size, generator=generator)).relu()
    activations[:, :: 7] = 0.0
    activations[:, 1::11] *= 4.0
    gradients = 1e-2 * torch.randn(batch, channels, size, size, generator=generator)
    return activations.reshape(batch, channels, size, size), gradients


def _capture(activations: torch.Tensor, gradients: torch.Tensor) -> Capture:
    batch = activations.shape[0]
    return Capture(activations, gradients, None, torch.zeros(batch), None)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighting", ["softmax", "linear"])
def test_weights_equal_per_image_reference(seed, weighting) -> None:
    activations, gradients = _structured(batch=3, channels=96, size=7, seed=seed)
    cam = CFCAM(torch.nn.Conv2d(1, 1, 1), weighting=weighting)
    ours = cam.channel_weights(_capture(activations, gradients)).numpy()
    for b in range(3):
        expected = reference_weights(activations[b].numpy(), gradients[b].numpy(), weighting)
        np.testing.assert_allclose(ours[b], expected, rtol=1e-4, atol=1e-7)


def test_map_equals_reference_on_a_cnn() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 128, 160)
    activations, gradients = (t.float().numpy() for t in reference_capture(model, model.layer4, x, [3, 8]))
    expected = []
    for b in range(2):
        weights = reference_weights(activations[b], gradients[b])
        cam = torch.from_numpy(np.maximum((weights[:, None, None] * activations[b]).sum(0), 0))
        up = F.interpolate(cam[None, None], size=(128, 160), mode="bilinear", align_corners=False)[0, 0].numpy()
        expected.append((up - up.min()) / (up.max() - up.min()))
    ours = CFCAM(model, "layer4")(x, [3, 8])
    np.testing.assert_allclose(ours.numpy(), np.stack(expected), atol=1e-4)


@pytest.mark.parametrize(
    "case",
    ["all_zero", "constant_channels", "few_channels", "one_channel", "all_noise", "identical_channels"],
)
def test_degenerate_inputs_give_defined_maps(case) -> None:
    generator = torch.Generator().manual_seed(0)
    channels = {"few_channels": 3, "one_channel": 1}.get(case, 40)
    activations = torch.rand(2, channels, 5, 5, generator=generator)
    gradients = torch.randn(2, channels, 5, 5, generator=generator) * 1e-2
    if case == "all_zero":
        activations.zero_()
    elif case == "constant_channels":
        activations = activations[:, :, :1, :1].expand(-1, -1, 5, 5).contiguous()
    elif case == "all_noise":
        activations = torch.eye(channels)[None, :, :25].reshape(1, channels, 5, 5).expand(2, -1, -1, -1) * torch.arange(1, channels + 1)[None, :, None, None]
    elif case == "identical_channels":
        activations = activations[:, :1].expand(-1, channels, -1, -1).contiguous()
    cam = CFCAM(torch.nn.Conv2d(1, 1, 1))
    weights = cam.channel_weights(_capture(activations, gradients))
    assert torch.isfinite(weights).all()
    for b in range(2):
        expected = reference_weights(activations[b].numpy(), gradients[b].numpy())
        np.testing.assert_allclose(weights[b].numpy(), expected, rtol=1e-4, atol=1e-7)
    maps = camkit.ops.maps.normalised_at_size(cam.layer_map(_capture(activations, gradients)).clamp_min(0), (20, 20))
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_whole_model_degenerate_all_zero_activations() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    )
    torch.nn.init.zeros_(model[0].weight)
    torch.nn.init.constant_(model[0].bias, -1.0)  # every activation is ReLU'd to zero
    maps = CFCAM(model, "1")(torch.randn(2, 3, 16, 16))
    assert torch.equal(maps, torch.zeros_like(maps))


@pytest.mark.parametrize("sigma", [0.7, 5.0])
def test_gaussian_filter_option(sigma) -> None:
    activations, gradients = _structured(batch=2, channels=64, size=6, seed=3)
    cam = CFCAM(torch.nn.Conv2d(1, 1, 1), filter="gaussian", sigma=sigma, weighting="linear")
    ours = cam.channel_weights(_capture(activations, gradients)).numpy()
    for b in range(2):
        expected = reference_weights(activations[b].numpy(), gradients[b].numpy(), "linear", _gaussian_kernel(sigma))
        np.testing.assert_allclose(ours[b], expected, rtol=1e-4, atol=1e-7)
    authors = CFCAM(torch.nn.Conv2d(1, 1, 1), weighting="linear").channel_weights(_capture(activations, gradients))
    assert not np.allclose(authors.numpy(), ours)


def test_options_are_validated() -> None:
    model = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="filter"):
        CFCAM(model, filter="box")
    with pytest.raises(ValueError, match="weighting"):
        CFCAM(model, weighting="max")
    with pytest.raises(ValueError, match="importance_quantile"):
        CFCAM(model, importance_quantile=1.5)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def test_softmax_weighting_ignores_the_class_and_linear_does_not(shapes_model) -> None:
    """The measured fact in CFCAM's docstring and the README."""
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(64, seed=7)
    other = (labels + 1) % 4
    softmax = CFCAM(shapes_model)
    linear = CFCAM(shapes_model, weighting="linear")
    assert _pearson(softmax(x, labels), softmax(x, other)).min() > 0.999
    assert _pearson(linear(x, labels), linear(x, other)).mean() < 0.5
    # so the softmax default declares itself class-agnostic (figures caption it so) and linear does not
    assert not softmax.class_specific and not CFCAM.class_specific and linear.class_specific
    assert not softmax.explain(x[:2]).class_specific and linear.explain(x[:2]).class_specific
