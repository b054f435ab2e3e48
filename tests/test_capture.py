"""One pass through the model: hooks, leaf swap, grad and inference modes."""
from __future__ import annotations

import copy
import threading

import pytest
import torch
import torchvision

import camkit

from .helpers import applicable_methods, no_hooks_left


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_logits_raise_for_gradient_methods(bad) -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        model.fc.bias[2] = bad  # the layer's activations stay finite, the explained logit does not
    x = torch.randn(2, 3, 64, 64)
    for cls in applicable_methods(model).values():
        if not cls.uses_gradients:
            continue
        with pytest.raises(camkit.CamkitError, match="NaN or infinite"):
            cls(model, "layer4")(x, 2)
        assert no_hooks_left(model)
    # A gradient-free method does not differentiate the score: its map is still defined.
    assert torch.isfinite(camkit.EigenCAM(model, "layer4")(x, 2)).all()


def _threaded_maps(calls: list, workers: int = 4, repeats: int = 12) -> list:
    results: list = [None] * (workers * repeats)
    errors: list = []

    def work(worker: int) -> None:
        try:
            for repeat in range(repeats):
                index = worker * repeats + repeat
                results[index] = calls[index % len(calls)]()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_threads_get_the_serial_maps() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    one = camkit.GradCAM(model, "layer4")
    other = camkit.GradCAMPlusPlus(model, "layer3")
    eigen = camkit.EigenCAM(model, "layer4")
    serial = [one(x, [0, 1]), other(x, [2, 3]), eigen(x)]
    calls = [lambda: one(x, [0, 1]), lambda: other(x, [2, 3]), lambda: eigen(x)]
    # one explainer from several threads, and several explainers on one model at once
    for index, maps in enumerate(_threaded_maps(calls)):
        torch.testing.assert_close(maps, serial[index % 3], atol=1e-6, rtol=0)
    assert no_hooks_left(model)


class _Wrap(torch.nn.Module):
    """A model around a shared backbone: hooks on the backbone's layers are seen by every wrapper."""

    def __init__(self, backbone: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.backbone, self.scale = backbone, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x * self.scale)


def test_threads_on_wrappers_sharing_a_backbone_get_the_serial_maps() -> None:
    backbone = torchvision.models.resnet18(num_classes=4).eval()
    first, second = _Wrap(backbone, 1.0), _Wrap(backbone, -0.5)
    x = torch.randn(2, 3, 64, 64)
    cams = [camkit.GradCAM(first, "backbone.layer4"), camkit.GradCAM(second, "backbone.layer3"),
            camkit.GradCAMPlusPlus(backbone, "layer4")]
    serial = [cam(x, [0, 1]) for cam in cams]
    calls = [lambda cam=cam: cam(x, [0, 1]) for cam in cams]
    for index, maps in enumerate(_threaded_maps(calls, workers=8, repeats=3)):
        torch.testing.assert_close(maps, serial[index % 3], atol=1e-6, rtol=0)
    assert no_hooks_left(backbone)


def test_overlapping_calls_on_a_wrapper_and_its_backbone_restore_the_flags() -> None:
    backbone = torchvision.models.resnet18(num_classes=4).train()
    wrapper = _Wrap(backbone, 1.0).train()
    x = torch.randn(1, 3, 32, 32)
    calls = [lambda: camkit.GradCAM(wrapper, "backbone.layer4")(x, 0), lambda: camkit.GradCAM(backbone, "layer4")(x, 0)]
    for _trial in range(4):  # the race left the backbone in eval mode in about half the trials
        _threaded_maps(calls, workers=8, repeats=2)
        assert all(module.training for module in wrapper.modules())


def test_the_models_own_exception_reaches_the_caller_unchanged_and_marked() -> None:
    from camkit.errors import raised_by_model

    class Refusing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x)
            if x.shape[0] > 1:
                raise AssertionError("batches of one only")
            return features.mean(dim=(2, 3))

    model = Refusing()
    with pytest.raises(AssertionError, match="batches of one") as raised:
        camkit.GradCAM(model, "conv")(torch.randn(2, 3, 8, 8), 0)
    assert raised_by_model(raised.value) and no_hooks_left(model)
    with pytest.raises(camkit.CamkitError) as refused:  # camkit's own errors are not the model's
        camkit.GradCAM(model, "conv")(torch.randn(1, 3, 8, 8), 9)
    assert not raised_by_model(refused.value)
