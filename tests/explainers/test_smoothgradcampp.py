"""Smooth Grad-CAM++ against Grad-CAM++ and a sequential float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import camkit

from ..helpers import NaNScores, tiny_strided_cnn


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


# layer4 of a ResNet feeds global pooling and a linear head, so its gradient
# does not depend on the input and noise could not change anything: use layer3.
LAYER = "layer3"


def test_zero_noise_equals_gradcampp(model) -> None:
    x = torch.randn(3, 3, 96, 80)
    smooth = camkit.SmoothGradCAMPlusPlus(model, LAYER, noise_level=0.0, n_samples=3, batch_size=4)(x, [1, 2, 3])
    plain = camkit.GradCAMPlusPlus(model, LAYER)(x, [1, 2, 3])
    torch.testing.assert_close(smooth, plain, atol=1e-5, rtol=0)


def _sequential_reference(model, x, classes, n_samples, noise_level, seed) -> np.ndarray:
    """The formula image by image, copy by copy, in float64, with camkit's noise contract."""
    layer = dict(model.named_modules())[LAYER]
    store = {}

    def hook(_m, _i, out):
        store["a"] = out
        if out.requires_grad:
            out.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    maps = []
    for b in range(x.shape[0]):
        image = x[b : b + 1]
        with torch.no_grad():
            model(image)
        activations = store["a"][0].double()
        sigma = noise_level * float(image.max() - image.min())
        moments = [0.0, 0.0, 0.0]
        for m in range(n_samples):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + m)
            noise = torch.randn(x.shape, generator=generator)[b : b + 1]
            logits = model(image + sigma * noise)
            logits[0, classes[b]].backward()
            g = store["g"][0].double()
            for power in range(3):
                moments[power] = moments[power] + g ** (power + 1) / n_samples
        model.zero_grad(set_to_none=True)
        d1, d2, d3 = moments
        denominator = 2 * d2 + activations.sum((1, 2), keepdim=True) * d3
        alpha = torch.where(denominator != 0, d2 / denominator, torch.zeros_like(d2))
        weights = (alpha * d1.clamp_min(0)).sum((1, 2))
        cam = (weights[:, None, None] * activations).sum(0).clamp_min(0)
        cam = F.interpolate(cam[None, None], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
        maps.append(((cam - cam.min()) / (cam.max() - cam.min())).numpy())
    handle.remove()
    return np.stack(maps)


def test_equals_sequential_reference(model) -> None:
    x = torch.randn(3, 3, 64, 96)
    classes = [4, 0, 9]
    ours = camkit.SmoothGradCAMPlusPlus(model, LAYER, n_samples=5, noise_level=0.2, batch_size=4, seed=7)(x, classes)
    expected = _sequential_reference(model, x, classes, n_samples=5, noise_level=0.2, seed=7)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)
    # and the noise did change the map
    assert (ours - camkit.GradCAMPlusPlus(model, LAYER)(x, classes)).abs().max() > 1e-2


def test_reproducible_and_independent_of_batch_size(model) -> None:
    x = torch.randn(3, 3, 64, 64)

    def run(**options):
        return camkit.SmoothGradCAMPlusPlus(model, LAYER, n_samples=4, **options)(x)

    first = run(seed=3, batch_size=32)
    torch.testing.assert_close(run(seed=3, batch_size=32), first, atol=0, rtol=0)
    torch.testing.assert_close(run(seed=3, batch_size=5), first, atol=1e-5, rtol=0)
    assert (run(seed=4, batch_size=32) - first).abs().max() > 1e-3


def test_default_passes_hold_eight_images_or_one_copy_of_a_larger_batch(model, monkeypatch) -> None:
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    try:
        camkit.SmoothGradCAMPlusPlus(model, LAYER, n_samples=4)(torch.randn(3, 3, 32, 32))
        small = list(seen)
        seen.clear()
        # a batch larger than the default pass: each noisy copy of the three images in a pass of its own
        monkeypatch.setattr("camkit.explainers.base.PASS_IMAGES", 2)
        camkit.SmoothGradCAMPlusPlus(model, LAYER, n_samples=4)(torch.randn(3, 3, 32, 32))
    finally:
        handle.remove()
    assert small == [3, 8, 4] and seen == [3, 3, 3, 3, 3]


def test_memory_bounded_by_batch_size(model) -> None:
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    try:
        camkit.SmoothGradCAMPlusPlus(model, LAYER, n_samples=6, batch_size=4)(torch.randn(3, 3, 32, 32))
    finally:
        handle.remove()
    # one clean pass of the 3 images, then 18 noisy copies four at a time
    assert seen[0] == 3 and max(seen[1:]) <= 4 and sum(seen[1:]) == 18


def test_options_are_validated(model) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        camkit.SmoothGradCAMPlusPlus(model, n_samples=0)
    with pytest.raises(ValueError, match="noise_level"):
        camkit.SmoothGradCAMPlusPlus(model, noise_level=-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        camkit.SmoothGradCAMPlusPlus(model, batch_size=0)


def test_works_under_inference_mode_with_class_targets() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    cam = camkit.SmoothGradCAMPlusPlus(model, "layer3", n_samples=2)
    expected = cam(x)
    with torch.inference_mode():
        inside = cam(x)  # the default target: each image's top class
        explicit = cam(torch.randn(2, 3, 64, 64), [1, 2])
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(inside, expected)
    assert explicit.shape == (2, 64, 64) and not explicit.is_inference()


def test_nan_scores_name_the_batch_images() -> None:
    torch.manual_seed(0)
    model = tiny_strided_cnn()
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(camkit.CamkitError, match=r"image\(s\) \[0, 1, 2\] of the batch"):
        camkit.SmoothGradCAMPlusPlus(NaNScores(model), "model.3", n_samples=4)(x)
    # Only the noisy copies' row 4 is NaN: copy-major rows, so that is copy 1 of image 1 (not "image 4").
    with pytest.raises(camkit.CamkitError, match=r"image\(s\) \[1\] of the batch"):
        camkit.SmoothGradCAMPlusPlus(NaNScores(model, rows=[4], after=1), "model.3", n_samples=4)(x)
