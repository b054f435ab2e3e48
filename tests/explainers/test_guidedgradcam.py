"""Guided Grad-CAM: guided backprop x the chosen CAM method's own map; pytorch-grad-cam's way gives the same."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit

from ..helpers import check_pixel_contract, relu_twin_cnns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("cam", ["gradcam", "gradcam++", camkit.EigenCAM])
def test_is_guided_backprop_times_the_cams_map(cam) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 48, 64)
    result = camkit.GuidedGradCAM(model, "layer3", cam=cam).explain(x)
    cam_result = camkit.create(cam, model, "layer3").explain(x)
    guided = camkit.GuidedBackprop(model).explain(x, cam_result.targets).attributions
    torch.testing.assert_close(result.attributions, guided * cam_result.maps[:, None])
    torch.testing.assert_close(result.layer_maps, cam_result.layer_maps)
    assert result.layer == "layer3" and result.targets.tolist() == cam_result.targets.tolist()


def test_equals_the_pytorch_grad_cam_way() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(2, 3, 48, 64), [2, 6]
    ours = camkit.GuidedGradCAM(model, "layer4").explain(x, classes).attributions
    peer = PeerGradCAM(model, [model.layer4])
    try:
        cam_maps = peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        peer.activations_and_grads.release()
    guided = GuidedBackpropReLUModel(model, device="cpu")
    theirs = np.stack([guided(x[i:i + 1].clone(), classes[i]).transpose(2, 0, 1) * cam_maps[i] for i in range(2)])
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_cam_options_pass_through_and_a_pixel_cam_is_refused() -> None:
    modules, functional = relu_twin_cnns()
    x = torch.randn(2, 3, 16, 16)
    smoothed = camkit.GuidedGradCAM(functional, "conv2", cam="gradcam", eigen_smooth=True)
    assert smoothed.cam.eigen_smooth and smoothed.target_layer_name == "conv2"
    torch.testing.assert_close(smoothed.explain(x, [0, 1]).attributions,
                               camkit.GuidedGradCAM(modules, "conv2", eigen_smooth=True).explain(x, [0, 1]).attributions)
    with pytest.raises(camkit.CamkitError, match="cam must be a CAM method"):
        camkit.GuidedGradCAM(functional, cam="saliency")


def test_contract() -> None:
    check_pixel_contract("guidedgradcam")
