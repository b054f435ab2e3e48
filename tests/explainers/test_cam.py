"""CAM against torchcam, Grad-CAM on a GAP + linear head, the automatic and the named classifier."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import camkit

from ..helpers import check_method_contract, tiny_cnn, torchcam_maps


def test_cam_equals_torchcam_and_gradcam_on_a_gap_linear_head() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 96)
    classes = [1, 7, 4]
    cam = camkit.CAM(model, "layer4")
    ours = cam(x, classes)
    np.testing.assert_allclose(ours.numpy(), torchcam_maps("CAM", model, ["layer4"], x, classes, fc_layer="fc"),
                               atol=1e-4)
    torch.testing.assert_close(ours, camkit.GradCAM(model, "layer4")(x, classes), atol=1e-5, rtol=0)
    assert cam.explain(x, classes).targets.tolist() == classes


def test_cam_finds_the_classifier_or_says_what_to_pass() -> None:
    model, x = tiny_cnn(), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(camkit.CAM(model, "3")(x, 1), camkit.CAM(model, "3", fc_layer=model[6])(x, 1))
    hidden_head = torch.nn.Sequential(*tiny_cnn()[:6], torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    with pytest.raises(camkit.CamkitError, match="linear classifier from the layer's 8 channels to the 5 classes"):
        camkit.CAM(hidden_head, "3")(x, 1)  # mobilenet-style: the Linear after the pooling is a hidden layer
    with pytest.raises(camkit.CamkitError, match=r"fc_layer has weights \(16, 8\)"):
        camkit.CAM(hidden_head, "3", fc_layer="6")(x, 1)
    with pytest.raises(camkit.CamkitTypeError, match="fc_layer must be an nn.Linear"):
        camkit.CAM(model, "3", fc_layer="0")
    with pytest.raises(camkit.CamkitError, match="not a callable"):
        camkit.CAM(model, "3")(x, lambda out: out[:, 0])


def test_cam_contract() -> None:
    check_method_contract("cam")


def test_cam_on_a_1x1_convolution_classifier_equals_torchcam() -> None:
    model = torchvision.models.squeezenet1_1(num_classes=6).eval()  # Conv2d(512, 6, 1), ReLU, GAP
    x, classes = torch.randn(2, 3, 64, 64), [2, 5]
    ours = camkit.CAM(model, "features")(x, classes)  # the 1x1 convolution found automatically
    torch.testing.assert_close(ours, camkit.CAM(model, "features", fc_layer="classifier.1")(x, classes))
    np.testing.assert_allclose(ours.numpy(), torchcam_maps("CAM", model, ["features"], x, classes,
                                                           fc_layer="classifier.1"), atol=1e-4)
