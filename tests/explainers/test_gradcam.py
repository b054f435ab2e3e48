"""Grad-CAM against pytorch-grad-cam."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torchvision

import camkit
from camkit.layers import find_layer
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


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
