"""Grad-CAM, Grad-CAM++ and Eigen-CAM against pytorch-grad-cam and float64 references."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit
from camkit.layers import find_layer

from .conftest import no_hooks_left, reference_capture


def _peer_gradcam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    peer = PeerGradCAM(model=model, target_layers=[layer])
    try:
        return peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        peer.activations_and_grads.release()


@pytest.mark.parametrize(
    ("factory", "layer", "size"),
    [
        (torchvision.models.resnet18, "layer4", (96, 128)),
        (torchvision.models.vgg11, "features.20", (64, 96)),
        (torchvision.models.densenet121, "features.denseblock4", (64, 80)),
        (torchvision.models.mobilenet_v3_small, "features", (96, 64)),
    ],
)
def test_gradcam_equals_pytorch_grad_cam(factory, layer, size) -> None:
    model = factory(num_classes=10).eval()
    if factory is torchvision.models.mobilenet_v3_small:
        # Its random-init maps are ~1e-10, where the peer's 1e-7 normalisation
        # epsilon (not camkit) dominates; a larger head brings them to ~1e-3.
        with torch.no_grad():
            model.classifier[-1].weight.mul_(1e4)
    x = torch.randn(3, 3, *size)
    classes = [1, 7, 4]  # one target per image
    ours = camkit.GradCAM(model, layer)(x, classes)
    theirs = _peer_gradcam(model, find_layer(model, layer)[1], x, classes)
    assert ours.shape == (3, *size) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


def _finish64(cam: torch.Tensor, size) -> np.ndarray:
    cam = F.interpolate(cam.clamp_min(0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((cam - low[:, None, None]) / (high - low)[:, None, None]).numpy()


def test_gradcampp_equals_float64_eq19() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 96)
    classes = [0, 3, 3, 9]
    activations, gradients = reference_capture(model, model.layer4, x, classes)
    numerator = gradients**2
    denominator = 2 * gradients**2 + activations.sum((2, 3), keepdim=True) * gradients**3
    alpha = torch.where(denominator != 0, numerator / denominator, torch.zeros_like(denominator))
    weights = (alpha * gradients.clamp_min(0)).sum((2, 3))
    expected = _finish64((weights[:, :, None, None] * activations).sum(1), (64, 96))
    ours = camkit.GradCAMPlusPlus(model, "layer4")(x, classes)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_gradcampp_keeps_small_gradients_that_an_epsilon_would_change() -> None:
    # alpha for tiny gradients is ~1/2 by eq. 19; an epsilon of 1e-6 in the
    # denominator would push it towards 0.
    from camkit.ops.weighting import gradcampp_weights

    g = torch.full((1, 1, 2, 2), 1e-4)
    a = torch.ones(1, 1, 2, 2)
    weights = gradcampp_weights(a, g, g**2, g**3)
    expected = 4 * (g[0, 0, 0, 0] ** 2 / (2 * g[0, 0, 0, 0] ** 2 + 4 * g[0, 0, 0, 0] ** 3)) * 1e-4
    assert torch.allclose(weights, expected.expand(1, 1), rtol=1e-5)
    # zero gradients: alpha defined as 0, never NaN
    zero = torch.zeros(1, 1, 2, 2)
    assert torch.equal(gradcampp_weights(a, zero, zero, zero), torch.zeros(1, 1))


def test_eigencam_equals_numpy_svd_with_sign_rule() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 96, 64)
    store = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activations = store["a"].double().numpy()
    projections = []
    for image in activations:
        positions = image.reshape(image.shape[0], -1).T
        centred = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0]
        channel_mean = positions.mean(axis=1)
        if np.corrcoef(projection, channel_mean)[0, 1] < 0:
            projection = -projection
        projections.append(projection.reshape(image.shape[1:]))
    expected = _finish64(torch.from_numpy(np.stack(projections)), (96, 64))
    ours = camkit.EigenCAM(model, "layer4")(x)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_eigencam_sign_follows_channel_mean() -> None:
    # One bright blob in every channel: the map must peak on the blob, not around it.
    from camkit.ops.weighting import principal_projection

    activations = torch.rand(2, 16, 7, 7) * 0.1
    activations[:, :, 2, 3] += 5.0
    projection = principal_projection(activations)
    assert torch.equal(projection.flatten(1).argmax(1), torch.tensor([2 * 7 + 3] * 2))


def test_inplace_relu_after_layer_gives_the_out_of_place_map() -> None:
    model = torchvision.models.vgg11(num_classes=10).eval()
    out_of_place = copy.deepcopy(model)
    for module in out_of_place.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    x = torch.randn(2, 3, 64, 64)
    for cls in (camkit.GradCAM, camkit.GradCAMPlusPlus, camkit.EigenCAM):
        # features.18 is a conv followed by ReLU(inplace=True)
        inplace_maps = cls(model, "features.18")(x, [2, 5])
        reference = cls(out_of_place, "features.18")(x, [2, 5])
        torch.testing.assert_close(inplace_maps, reference, atol=1e-6, rtol=0)
        assert inplace_maps.max() > 0


def test_model_left_as_found() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer1.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    bn_stats = model.bn1.running_mean.clone()
    x = torch.randn(2, 3, 64, 64)
    for cls in camkit.METHODS.values():
        cls(model)(x)
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert no_hooks_left(model)
        assert torch.equal(model.bn1.running_mean, bn_stats)  # ran in eval mode
        assert torch.is_grad_enabled()


def test_hooks_removed_when_forward_raises() -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        camkit.GradCAM(model, "conv")(torch.randn(1, 3, 8, 8), 0)
    assert no_hooks_left(model)
    assert torch.is_grad_enabled()


def test_works_under_no_grad_inference_mode_and_frozen_parameters() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    reference = camkit.GradCAM(model)(x)
    with torch.no_grad():
        assert torch.allclose(camkit.GradCAM(model)(x), reference)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        assert torch.allclose(camkit.GradCAM(model)(x), reference)
    model.requires_grad_(False)
    assert torch.allclose(camkit.GradCAMPlusPlus(model)(x), camkit.GradCAMPlusPlus(model)(x))
    assert torch.allclose(camkit.GradCAM(model)(x), reference)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_targets_none_int_sequence_tensor() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    cam = camkit.GradCAM(model)
    top = model(x).argmax(1)
    torch.testing.assert_close(cam(x), cam(x, top))
    torch.testing.assert_close(cam(x, 4), cam(x, [4, 4, 4]))
    torch.testing.assert_close(cam(x, torch.tensor([1, 2, 3])), cam(x, (1, 2, 3)))
    result = cam.explain(x, [1, 2, 3])
    assert result.targets.tolist() == [1, 2, 3] and torch.equal(result.predictions, top)
    assert result.layer == "layer4" and result.layer_maps.shape == (3, 2, 2)


def test_callable_target_and_structured_outputs() -> None:
    base = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = camkit.GradCAM(base, "layer4")(x, [3, 5])

    class Wrapped(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.net, self.kind = base, kind

        def forward(self, x):
            logits = self.net(x)
            if self.kind == "tuple":
                return logits, logits.sum()
            if self.kind == "dict":
                return {"aux": logits.sum(), "logits": logits}
            return type("Output", (), {"logits": logits})()

    for kind in ("tuple", "dict", "object"):
        torch.testing.assert_close(camkit.GradCAM(Wrapped(kind), "net.layer4")(x, [3, 5]), expected)
    by_callable = camkit.GradCAM(base, "layer4")(x, lambda out: out[:, 3] * 0 + out[torch.arange(2), [3, 5]])
    torch.testing.assert_close(by_callable, expected)


def test_automatic_layer_choice_is_reported(caplog) -> None:
    import logging

    cases = {
        torchvision.models.resnet18: "layer4",
        torchvision.models.vgg11: "features",
        torchvision.models.densenet121: "features",
        torchvision.models.mobilenet_v3_small: "features",
    }
    for factory, expected in cases.items():
        cam = camkit.GradCAM(factory(num_classes=10))
        with caplog.at_level(logging.INFO, logger="camkit"):
            cam(torch.randn(1, 3, 64, 64))
        assert cam.target_layer_name == expected
        assert repr(expected) in caplog.text


def test_constant_map_is_zeros_not_nan() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    torch.nn.init.zeros_(model[3].weight)  # every gradient is zero
    for cls in camkit.METHODS.values():
        maps = cls(model, "0")(torch.randn(2, 3, 16, 16))
        assert torch.isfinite(maps).all()
        # Eigen-CAM ignores gradients; CF-CAM's softmax of all-zero weights is uniform.
        if cls not in (camkit.EigenCAM, camkit.CFCAM):
            assert torch.equal(maps, torch.zeros_like(maps))


class TestBadInput:
    model = torchvision.models.resnet18(num_classes=10).eval()

    def test_not_a_tensor(self) -> None:
        with pytest.raises(TypeError, match="torch.Tensor"):
            camkit.GradCAM(self.model)(np.zeros((1, 3, 32, 32), dtype=np.float32))

    def test_not_4d(self) -> None:
        with pytest.raises(ValueError, match=r"4-D batch.*unsqueeze"):
            camkit.GradCAM(self.model)(torch.randn(3, 32, 32))

    def test_empty_batch(self) -> None:
        with pytest.raises(ValueError, match="empty batch"):
            camkit.GradCAM(self.model)(torch.randn(0, 3, 32, 32))

    def test_integer_input(self) -> None:
        with pytest.raises(TypeError, match="floating-point"):
            camkit.GradCAM(self.model)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))

    def test_nan_input(self) -> None:
        x = torch.randn(2, 3, 32, 32)
        x[1, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinite"):
            camkit.GradCAM(self.model)(x)

    def test_nan_activations(self) -> None:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            model.layer3[0].conv1.weight[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="'layer4' produced NaN"):
            camkit.GradCAM(model, "layer4")(torch.randn(1, 3, 32, 32))
        assert no_hooks_left(model)

    def test_no_spatial_layer(self) -> None:
        mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        with pytest.raises(ValueError, match="no layer with a spatial output"):
            camkit.GradCAM(mlp)(torch.randn(2, 3, 8, 8))

    def test_wrong_layer_name_lists_close_names(self) -> None:
        with pytest.raises(ValueError, match=r"no layer named 'layer5'.*layer4"):
            camkit.GradCAM(self.model, "layer5")
        with pytest.raises(ValueError, match=r"layer4\.1\.conv1"):
            camkit.GradCAM(self.model, "layer4.1.conv")
        assert camkit.GradCAM(self.model, "layer4[1]").target_layer_name == "layer4.1"

    def test_foreign_module(self) -> None:
        with pytest.raises(ValueError, match="not a submodule"):
            camkit.GradCAM(self.model, torch.nn.Conv2d(1, 1, 1))

    def test_target_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="model has 10 classes"):
            camkit.GradCAM(self.model)(torch.randn(2, 3, 32, 32), 10)
        with pytest.raises(ValueError, match="2 class indices for a batch of 3"):
            camkit.GradCAM(self.model)(torch.randn(3, 3, 32, 32), [1, 2])
        with pytest.raises(TypeError, match="integers"):
            camkit.GradCAM(self.model)(torch.randn(1, 3, 32, 32), [1.5])

    def test_bad_callable_target(self) -> None:
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            camkit.GradCAM(self.model)(torch.randn(2, 3, 32, 32), lambda out: out)

    def test_not_a_model(self) -> None:
        with pytest.raises(TypeError, match="nn.Module"):
            camkit.GradCAM(lambda x: x)
