"""The pipeline every explainer shares: the model left as found, constant maps, bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

import camkit

from ..helpers import NEEDS_LINEAR_HEAD, applicable_methods, no_hooks_left, quick_options, reads_no_layer


def test_model_left_as_found() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer1.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    bn_stats = model.bn1.running_mean.clone()
    x = torch.randn(2, 3, 64, 64)
    for cls in applicable_methods(model).values():
        cls(model, **quick_options(cls))(x)
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert no_hooks_left(model)
        assert torch.equal(model.bn1.running_mean, bn_stats)  # ran in eval mode
        assert torch.is_grad_enabled()


def test_constant_map_is_zeros_not_nan() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    torch.nn.init.zeros_(model[3].weight)  # every gradient is zero
    for cls in applicable_methods(model).values():
        maps = cls(model, "0", **quick_options(cls))(torch.randn(2, 3, 16, 16))
        assert torch.isfinite(maps).all()
        # Eigen-CAM and KPCA-CAM ignore the class; CF-CAM's softmax of all-zero weights is uniform, and so
        # are the Score-CAM family's class probabilities when every logit is the bias alone.
        if cls.class_specific and cls not in (camkit.CFCAM, camkit.ScoreCAM, camkit.SSCAM, camkit.ISCAM):
            assert torch.equal(maps, torch.zeros_like(maps))


class TestBadInput:
    model = torchvision.models.resnet18(num_classes=10).eval()

    def test_not_a_tensor(self) -> None:
        with pytest.raises(camkit.CamkitTypeError, match="torch.Tensor"):
            camkit.GradCAM(self.model)(np.zeros((1, 3, 32, 32), dtype=np.float32))

    def test_not_4d(self) -> None:
        with pytest.raises(camkit.CamkitError, match=r"4-D batch.*unsqueeze"):
            camkit.GradCAM(self.model)(torch.randn(3, 32, 32))

    def test_empty_batch(self) -> None:
        with pytest.raises(camkit.CamkitError, match="empty batch"):
            camkit.GradCAM(self.model)(torch.randn(0, 3, 32, 32))

    def test_integer_input(self) -> None:
        with pytest.raises(camkit.CamkitTypeError, match="floating-point"):
            camkit.GradCAM(self.model)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))

    def test_nan_input(self) -> None:
        x = torch.randn(2, 3, 32, 32)
        x[1, 0, 0, 0] = float("nan")
        with pytest.raises(camkit.CamkitError, match="NaN or infinite"):
            camkit.GradCAM(self.model)(x)

    def test_nan_activations(self) -> None:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            model.layer3[0].conv1.weight[0, 0, 0, 0] = float("nan")
        with pytest.raises(camkit.CamkitError, match="'layer4' produced NaN"):
            camkit.GradCAM(model, "layer4")(torch.randn(1, 3, 32, 32))
        assert no_hooks_left(model)

    def test_no_spatial_layer(self) -> None:
        mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        with pytest.raises(camkit.CamkitError, match="no layer with a spatial output"):
            camkit.GradCAM(mlp)(torch.randn(2, 3, 8, 8))

    def test_wrong_layer_name_lists_close_names(self) -> None:
        with pytest.raises(camkit.CamkitError, match=r"no layer named 'layer5'.*layer4"):
            camkit.GradCAM(self.model, "layer5")
        with pytest.raises(camkit.CamkitError, match=r"layer4\.1\.conv1"):
            camkit.GradCAM(self.model, "layer4.1.conv")
        assert camkit.GradCAM(self.model, "layer4[1]").target_layer_name == "layer4.1"

    def test_foreign_module(self) -> None:
        with pytest.raises(camkit.CamkitError, match="not a submodule"):
            camkit.GradCAM(self.model, torch.nn.Conv2d(1, 1, 1))

    def test_target_out_of_range(self) -> None:
        with pytest.raises(camkit.CamkitError, match="model has 10 classes"):
            camkit.GradCAM(self.model)(torch.randn(2, 3, 32, 32), 10)
        with pytest.raises(camkit.CamkitError, match="2 class indices for a batch of 3"):
            camkit.GradCAM(self.model)(torch.randn(3, 3, 32, 32), [1, 2])
        with pytest.raises(camkit.CamkitTypeError, match="integers"):
            camkit.GradCAM(self.model)(torch.randn(1, 3, 32, 32), [1.5])

    def test_bad_callable_target(self) -> None:
        with pytest.raises(camkit.CamkitError, match=r"shape \(2,\)"):
            camkit.GradCAM(self.model)(torch.randn(2, 3, 32, 32), lambda out: out)

    def test_not_a_model(self) -> None:
        with pytest.raises(camkit.CamkitTypeError, match="nn.Module"):
            camkit.GradCAM(lambda x: x)


def test_a_map_flat_at_the_layer_is_zeros_not_noise() -> None:
    # vgg11's `features` is 1x1 at 32 px: upsampling a constant leaves ~1e-8 of float noise,
    # which min-max normalisation used to stretch into a {0, 0.5, 1} pattern.
    model = torchvision.models.vgg11(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    for name, cls in applicable_methods(model).items():
        if name in NEEDS_LINEAR_HEAD:  # vgg's head takes 512 x 7 x 7 inputs, not the 512 channels
            with pytest.raises(camkit.CamkitError, match="linear classifier from the layer's 512 channels"):
                cls(model, "features", **quick_options(cls))(x)
            continue
        if reads_no_layer(cls):  # its map is the input's, not the layer's
            continue
        result = cls(model, "features", **quick_options(cls)).explain(x)
        # SESS fuses its windows' maps at the image's resolution, so its layer map is the image's size
        assert result.layer_maps.shape[1:] == ((32, 32) if name == "sess" else (1, 1))
        assert torch.equal(result.maps, torch.zeros_like(result.maps)), cls.__name__
    # the same rule inside a fusion: the flat layer contributes nothing, the other its own map
    fused = camkit.GradCAM(model, ["features", "features.15"])(x)
    alone = camkit.GradCAM(model, "features.15")(x)
    torch.testing.assert_close(fused, alone, atol=1e-6, rtol=0)


def test_flat_rule_is_relative_to_the_maps_magnitude() -> None:
    from camkit.ops.maps import normalised_at_size

    level = torch.full((3, 4, 4), 2.0)
    level[0, 1, 1] += 1e-7  # spread 5e-8 of the magnitude: flat
    level[1, 1, 1] += 1e-3  # a real (if faint) peak
    level[2] = 0.0  # all zero: flat
    maps = normalised_at_size(level, (16, 16))
    assert torch.equal(maps[0], torch.zeros(16, 16)) and torch.equal(maps[2], torch.zeros(16, 16))
    assert maps[1].max() == 1 and maps[1].min() == 0


def test_create_takes_a_name_or_a_class() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    by_class = camkit.create(camkit.GradCAM, model, "layer4")
    by_name = camkit.create("GradCAM++", model, "layer4")
    assert type(by_class) is camkit.GradCAM and type(by_name) is camkit.GradCAMPlusPlus
    with pytest.raises(camkit.CamkitTypeError, match="Explainer subclass"):
        camkit.create(torch.nn.Linear, model)
    with pytest.raises(camkit.CamkitError, match="choose one of gradcam"):
        camkit.create("gradkam", model)


def test_options_shared_by_every_method_pass_through_to_the_base() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    swap = lambda tensor: tensor  # noqa: E731 - an identity reshape
    for cls in applicable_methods(model).values():
        explainer = cls(model, ["layer3", "layer4"], reshape=swap, fuse="max")
        assert explainer.fuse == "max" and explainer.reshape is swap
        with pytest.raises(camkit.CamkitError, match="fuse must be"):
            cls(model, fuse="median")
