"""RefineCAM: the product of per-layer maps, against pytorch-grad-cam's RefineCAM and camkit's own single-layer maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam import RefineCAM as PeerRefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit

from ..helpers import check_method_contract, reference_normalise, tiny_cnn

LAYERS = ["layer2", "layer3", "layer4"]


def _peer(model: torch.nn.Module, x: torch.Tensor, classes: list[int], **options) -> np.ndarray:
    peer = PeerRefineCAM(model, [getattr(model, name) for name in LAYERS], **options)
    try:
        return peer(x, [ClassifierOutputTarget(c) for c in classes])
    finally:
        for per_layer in peer.base_cam_per_layer:
            per_layer.activations_and_grads.release()


def test_refinecam_equals_the_peer_and_the_product_of_single_layer_maps() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), [1, 7, 4]
    ours = camkit.RefineCAM(model, LAYERS, base=camkit.GradCAM)(x, classes)
    np.testing.assert_allclose(ours.numpy(), _peer(model, x, classes, base_method=PeerGradCAM), atol=2e-3)
    # The default base, Grad-CAM++: the product of camkit's own per-layer maps (the peer's Grad-CAM++ adds an
    # epsilon to eq. 19's denominator, which moves its maps by about 1e-2; camkit's follows the paper).
    default = camkit.RefineCAM(model, LAYERS)(x, classes)
    single = torch.stack([camkit.GradCAMPlusPlus(model, name)(x, classes) for name in LAYERS]).double()
    np.testing.assert_allclose(default.numpy(), reference_normalise(single.prod(0)).numpy(), atol=1e-5)
    assert np.abs(default.numpy() - _peer(model, x, classes)).max() < 5e-2


def test_fuse_product_is_refinecam_on_any_method_and_one_layer_is_the_base() -> None:
    model, x = tiny_cnn(), torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(camkit.GradCAM(model, ["1", "3"], fuse="product")(x, 1),
                               camkit.RefineCAM(model, ["1", "3"], base=camkit.GradCAM)(x, 1))
    torch.testing.assert_close(camkit.RefineCAM(model, "3")(x, 1), camkit.GradCAMPlusPlus(model, "3")(x, 1))
    eigen = camkit.RefineCAM(model, ["1", "3"], base=camkit.EigenCAM)
    assert not eigen.uses_gradients and eigen(x).shape == (2, 10, 10)
    torch.testing.assert_close(camkit.RefineCAM(model, ["1", "3"], fuse="mean")(x, 1),
                               camkit.GradCAMPlusPlus(model, ["1", "3"])(x, 1))
    with pytest.raises(camkit.CamkitTypeError, match="base"):
        camkit.RefineCAM(model, "3", base=torch.nn.ReLU)


def test_refinecam_contract() -> None:
    check_method_contract("refinecam")
