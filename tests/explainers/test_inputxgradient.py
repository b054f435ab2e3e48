"""Input x Gradient: captum's InputXGradient to 1e-4."""
from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import InputXGradient as CaptumInputXGradient

import camkit

from ..helpers import check_pixel_contract

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_equals_captum() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 48, 64), [1, 7, 4]
    ours = camkit.InputXGradient(model).explain(x, classes).attributions
    theirs = CaptumInputXGradient(model).attribute(x.clone(), target=classes)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_contract() -> None:
    check_pixel_contract("inputxgradient")
