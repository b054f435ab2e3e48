"""LayerCAM against pytorch-grad-cam and torchcam (one layer) and the paper's fusion in float64 (several)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import LayerCAM as PeerLayerCAM

import camkit

from ..helpers import (
    check_against_float64_and_peer, check_method_contract, reference_capture, reference_normalise, torchcam_maps,
)


def test_layercam_one_layer_equals_both_peers() -> None:
    ours = check_against_float64_and_peer("layercam", PeerLayerCAM, "layer3", lambda a, g: (g.clamp_min(0) * a).sum(1))
    torch.manual_seed(0)  # the same model and images again, for torchcam
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 96)
    np.testing.assert_allclose(ours.numpy(), torchcam_maps("LayerCAM", model, ["layer3"], x, [1, 7, 4]), atol=1e-4)


def test_layercam_fuses_shallow_layers_scaled_by_tanh_by_max() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 48, 64)
    classes = [3, 5]
    levels = []
    for layer, scaled in ((model.layer2, True), (model.layer4, False)):  # layer4 is the deepest
        activations, gradients = reference_capture(model, layer, x, classes)
        maps = (gradients.clamp_min(0) * activations).sum(1).clamp_min(0)
        if scaled:
            maps = torch.tanh(2 * maps / maps.flatten(1).max(1).values[:, None, None])
        else:
            maps = reference_normalise(maps)
        levels.append(F.interpolate(maps[:, None], size=(48, 64), mode="bilinear", align_corners=False)[:, 0])
    expected = reference_normalise(torch.stack(levels).amax(0))
    ours = camkit.LayerCAM(model, ["layer4", "layer2"])(x, classes)  # the order given does not matter
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-4)


def test_layercam_contract() -> None:
    check_method_contract("layercam")
