"""Grad-CAM++ against a float64 eq. 19 reference."""
from __future__ import annotations


import numpy as np
import torch
import torchvision

import camkit

from ..helpers import reference_capture, reference_finish


def test_gradcampp_equals_float64_eq19() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 96)
    classes = [0, 3, 3, 9]
    activations, gradients = reference_capture(model, model.layer4, x, classes)
    numerator = gradients**2
    denominator = 2 * gradients**2 + activations.sum((2, 3), keepdim=True) * gradients**3
    alpha = torch.where(denominator != 0, numerator / denominator, torch.zeros_like(denominator))
    weights = (alpha * gradients.clamp_min(0)).sum((2, 3))
    expected = reference_finish((weights[:, :, None, None] * activations).sum(1), (64, 96))
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
