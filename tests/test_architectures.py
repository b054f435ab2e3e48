"""Every common torchvision family: automatic layer, token and channels-last reshaping."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit

from .helpers import NEEDS_LINEAR_HEAD, cam_methods, no_hooks_left, quick_options, reads_no_layer

FAMILIES = {
    # model: (automatic layer, input size)
    "resnet18": ("layer4", (64, 80)),
    "vgg11": ("features", (64, 64)),
    "densenet121": ("features", (64, 64)),
    "mobilenet_v3_small": ("features", (64, 64)),
    "efficientnet_b0": ("features", (64, 96)),
    "regnet_x_400mf": ("trunk_output", (64, 64)),
    "convnext_tiny": ("features", (64, 96)),
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", (112, 112)),  # built for 112²: 7 x 7 patches
    "swin_t": ("features", (96, 128)),
    "maxvit_t": ("blocks.3", (224, 224)),
}


def _model(name: str, **options: int) -> torch.nn.Module:
    model = torchvision.models.get_model(name, weights=None, num_classes=5, **options).eval()
    if name == "vit_b_16":
        # torchvision zero-initialises the ViT head: every gradient would be 0.
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


# Heads that do not start with GAP + one nn.Linear from the layer's channels to the classes.
NO_LINEAR_HEAD = ("vgg11", "mobilenet_v3_small")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_method_on_every_family(name: str) -> None:
    layer, size = FAMILIES[name]
    # The ViT-B/16 architecture at a quarter of the pixels (its own 224² is in the peer tests below).
    model = _model(name, image_size=size[0]) if name == "vit_b_16" else _model(name)
    x = torch.randn(1, 3, *size)
    for method, cls in cam_methods().items():  # the attention methods have their own tests
        cam = cls(model, **quick_options(cls))
        if method in NEEDS_LINEAR_HEAD and name in NO_LINEAR_HEAD:
            with pytest.raises(camkit.CamkitError, match="linear classifier from the layer's"):
                cam(x)
            continue
        maps = cam(x)
        assert cam.target_layer_name == (None if reads_no_layer(cls) else layer)
        assert maps.shape == (1, *size) and torch.isfinite(maps).all(), method
        # Grad-CAM++ and CF-CAM may ReLU a random model's map to all zeros.
        if method in ("gradcam", "eigencam"):
            assert maps.max() == 1.0, f"{method} gave an empty map on {name}"
    assert no_hooks_left(model)


def _peer(model, layer, x, classes, reshape):
    peer = PeerGradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        return peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        peer.activations_and_grads.release()


def test_vit_equals_pytorch_grad_cam_with_hand_written_reshape() -> None:
    model = _model("vit_b_16")
    x = torch.randn(2, 3, 224, 224)
    layer = model.encoder.layers.encoder_layer_11.ln_1

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:, :].reshape(tokens.shape[0], 14, 14, tokens.shape[2]).permute(0, 3, 1, 2)

    expected = _peer(model, layer, x, [1, 3], reshape)
    np.testing.assert_allclose(camkit.GradCAM(model)(x, [1, 3]).numpy(), expected, atol=1e-4)


def test_swin_non_square_equals_pytorch_grad_cam_with_permute() -> None:
    model = _model("swin_t")
    x = torch.randn(2, 3, 96, 160)
    expected = _peer(model, model.features, x, [0, 4], lambda t: t.permute(0, 3, 1, 2))
    ours = camkit.GradCAM(model)(x, [0, 4])
    assert ours.shape == (2, 96, 160)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_user_reshape_overrides_the_rules() -> None:
    model = _model("vit_b_16")
    x = torch.randn(1, 3, 224, 224)
    calls = []

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tokens.shape))
        return tokens[:, 1:, :].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)

    torch.testing.assert_close(camkit.GradCAM(model, reshape=reshape)(x), camkit.GradCAM(model)(x))
    assert calls == [(1, 197, 768)] * 2  # activations and gradients


def test_wrong_size_input_to_fixed_size_vit_is_the_models_own_error() -> None:
    model = _model("vit_b_16")
    with pytest.raises(AssertionError, match="Wrong image height"):
        camkit.GradCAM(model)(torch.randn(1, 3, 192, 224))
    assert no_hooks_left(model)


def test_token_grid_without_patch_size() -> None:
    from camkit.layouts import token_grid

    assert token_grid(197, (224, 224), None) == (14, 14)
    assert token_grid(1 + 4 + 14 * 10, (224, 160), None) == (14, 10)  # class + 4 registers
    assert token_grid(2 + 12 * 16, (192, 256), (16, 16)) == (12, 16)  # class + distillation
    with pytest.raises(ValueError, match="reshape="):
        token_grid(5, (224, 160), None)


def test_timm_vit_with_register_tokens_non_square() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=5, reg_tokens=4, img_size=(224, 160)
    ).eval()
    x = torch.randn(2, 3, 224, 160)
    cam = camkit.GradCAM(model)
    maps = cam(x, [1, 2])
    assert cam.target_layer_name == "blocks.11.norm1"
    layer = model.blocks[11].norm1

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 5:, :].reshape(tokens.shape[0], 14, 10, -1).permute(0, 3, 1, 2)

    np.testing.assert_allclose(maps.numpy(), _peer(model, layer, x, [1, 2], reshape), atol=1e-4)


def test_hugging_face_style_vit() -> None:
    """A model that returns an object with .logits and declares its patch size in .config."""
    from types import SimpleNamespace

    vit = _model("vit_b_16")

    class HuggingFaceStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit
            self.config = SimpleNamespace(patch_size=16)

        def forward(self, pixel_values: torch.Tensor):
            return SimpleNamespace(logits=self.vit(pixel_values))

    x = torch.randn(1, 3, 224, 224)
    cam = camkit.GradCAM(HuggingFaceStyle())
    torch.testing.assert_close(cam(x, 2), camkit.GradCAM(vit)(x, 2))
    assert cam.target_layer_name == "vit.encoder.layers.encoder_layer_11.ln_1"
