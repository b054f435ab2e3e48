"""XGrad-CAM against a float64 reference (no epsilon), torchcam and pytorch-grad-cam (with theirs)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import XGradCAM as PeerXGradCAM

import camkit
from camkit.ops.weighting import activation_normalised_weights

from ..helpers import check_method_contract, peer_maps, reference_capture, reference_finish, torchcam_maps


def test_xgradcam_equals_float64_and_the_peers() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 96)
    classes = [1, 7, 4]
    activations, gradients = reference_capture(model, model.layer4, x, classes)
    sums = activations.sum((2, 3))
    weights = torch.where(sums != 0, (activations * gradients).sum((2, 3)) / sums, 0.0)  # dead channels: 0
    expected = reference_finish((weights[:, :, None, None] * activations).sum(1), (64, 96))
    ours = camkit.XGradCAM(model, "layer4")(x, classes)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)
    # Post-ReLU activations sum to far more than the peers' 1e-7 / 1e-8 epsilons here.
    np.testing.assert_allclose(ours.numpy(), torchcam_maps("XGradCAM", model, ["layer4"], x, classes), atol=1e-4)
    np.testing.assert_allclose(ours.numpy(), peer_maps(PeerXGradCAM, model, [model.layer4], x, classes), atol=1e-4)


def test_a_channel_that_sums_to_zero_gets_weight_zero_not_an_epsilon_quotient() -> None:
    activations = torch.tensor([[[[1.0, -1.0]], [[2.0, 1.0]]]])  # channel 0 sums to exactly 0
    gradients = torch.ones_like(activations)
    weights = activation_normalised_weights(activations, gradients)
    assert torch.equal(weights, torch.tensor([[0.0, 1.0]]))
    tiny = activation_normalised_weights(activations * 1e-7, gradients)  # an epsilon of 1e-7 would halve this
    torch.testing.assert_close(tiny, torch.tensor([[0.0, 1.0]]))


def test_xgradcam_contract() -> None:
    check_method_contract("xgradcam")
