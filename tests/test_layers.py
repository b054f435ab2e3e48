"""Finding and automatically choosing target layers."""
from __future__ import annotations


import torch
import torchvision

import camkit


def test_automatic_layer_choice_is_reported(caplog) -> None:
    import logging

    cases = {
        torchvision.models.resnet18: "layer4",
        torchvision.models.vgg11: "features",
        torchvision.models.densenet121: "features",
        torchvision.models.mobilenet_v3_small: "features",
    }
    for factory, expected in cases.items():
        cam = camkit.GradCAM(factory(num_classes=10))
        with caplog.at_level(logging.INFO, logger="camkit"):
            cam(torch.randn(1, 3, 64, 64))
        assert cam.target_layer_name == expected
        assert repr(expected) in caplog.text
