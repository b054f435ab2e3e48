"""Eigen-Grad-CAM and eigen_smooth against numpy's SVD with the sign rule, and pytorch-grad-cam up to its sign."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import EigenGradCAM as PeerEigenGradCAM
from pytorch_grad_cam import GradCAM as PeerGradCAM

import camkit
from camkit.ops.pca import principal_projection

from ..helpers import (
    check_method_contract, first_principal_component, matches_up_to_sign, peer_maps, reference_capture,
    reference_finish, signed_projections,
)


def test_eigengradcam_equals_float64_and_pytorch_grad_cam_up_to_its_sign() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    classes = [1, 7, 4, 0]
    activations, gradients = reference_capture(model, model.layer3, x, classes)
    signed, _ = signed_projections(gradients * activations, first_principal_component)
    ours = camkit.EigenGradCAM(model, "layer3")(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish(signed, (64, 64)), atol=1e-4)
    theirs = peer_maps(PeerEigenGradCAM, model, [model.layer3], x, classes)
    assert (matches_up_to_sign(theirs, signed, (64, 64)) != 0).all()  # the same map, or the inverted component's


def test_eigen_smooth_is_the_first_component_of_the_weighted_channels() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    classes = [1, 7, 4, 0]
    activations, gradients = reference_capture(model, model.layer3, x, classes)
    weighted = gradients.mean((2, 3))[:, :, None, None] * activations
    signed, _ = signed_projections(weighted, first_principal_component)
    ours = camkit.GradCAM(model, "layer3", eigen_smooth=True)(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish(signed, (64, 64)), atol=1e-4)
    theirs = peer_maps(PeerGradCAM, model, [model.layer3], x, classes, eigen_smooth=True)
    assert (matches_up_to_sign(theirs, signed, (64, 64)) != 0).all()
    for name in ("hirescam", "layercam", "xgradcam", "cam"):  # every channel-weighted method takes the option
        assert camkit.create(name, model, "layer4", eigen_smooth=True)(x, classes).max() == 1


def test_sign_follows_the_channel_mean_of_g_times_a() -> None:
    contributions = torch.rand(2, 16, 7, 7) * 0.1
    contributions[:, :, 2, 3] += 5.0  # one strong positive contribution in every channel
    assert torch.equal(principal_projection(contributions).flatten(1).argmax(1), torch.tensor([2 * 7 + 3] * 2))
    assert torch.equal(principal_projection(-contributions).flatten(1).argmin(1), torch.tensor([2 * 7 + 3] * 2))


def test_eigengradcam_contract() -> None:
    check_method_contract("eigengradcam")
