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
    # layer3 has guided ReLUs above it (layer4): the CAM's gradients must still be the plain ones.
    expected = guided * cam_result.maps[:, None]
    torch.testing.assert_close(result.attributions, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    torch.testing.assert_close(result.layer_maps, cam_result.layer_maps, rtol=1e-6, atol=1e-6)
    assert result.layer == "layer3" and result.targets.tolist() == cam_result.targets.tolist()


def _forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("cam", ["gradcam", "eigencam", "layercam"])
def test_one_forward_serves_both_maps(cam) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    explainer = camkit.GuidedGradCAM(model, "layer3", cam=cam)
    calls = _forwards(model)
    result = explainer.explain(x, [4, 1])
    assert calls[0] == 1 and explainer.shares_forward([4, 1])
    cam_maps = camkit.create(cam, model, "layer3").explain(x, [4, 1]).maps
    guided = camkit.GuidedBackprop(model).explain(x, [4, 1]).attributions
    expected = guided * cam_maps[:, None]
    torch.testing.assert_close(result.attributions, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    assert all(p.grad is None for p in model.parameters())


def test_a_cam_with_passes_of_its_own_runs_them_then_one_guided_pass() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    explainer = camkit.GuidedGradCAM(model, "layer4", cam="scorecam", batch_size=64)
    assert not explainer.shares_forward(None)
    result = explainer.explain(x, [4, 1])
    cam_maps = camkit.create("scorecam", model, "layer4", batch_size=64).explain(x, [4, 1]).maps
    guided = camkit.GuidedBackprop(model).explain(x, [4, 1]).attributions
    expected = guided * cam_maps[:, None]
    torch.testing.assert_close(result.attributions, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())


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
