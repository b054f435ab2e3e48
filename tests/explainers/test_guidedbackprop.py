"""Guided backprop: captum's GuidedBackprop to 1e-4, every ReLU form, a ReLU-free model said once."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop

import camkit

from ..helpers import check_pixel_contract, relu_twin_cnns, tiny_vit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_equals_captum() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 48, 64), [1, 7, 4]
    result = camkit.GuidedBackprop(model).explain(x, classes)
    theirs = CaptumGuidedBackprop(model).attribute(x.clone(), target=classes)
    torch.testing.assert_close(result.attributions, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
    assert result.layer == "input" and result.targets.tolist() == classes
    # the map: sum over channels of |attribution|, min-max per image
    reduced = theirs.abs().sum(1).flatten(1)
    expected = (reduced - reduced.amin(1, keepdim=True)) / (reduced.amax(1, keepdim=True) - reduced.amin(1, keepdim=True))
    torch.testing.assert_close(result.maps.flatten(1), expected, atol=1e-5, rtol=0)


def test_functional_relus_give_the_same_attributions_as_their_module_twin() -> None:
    modules, functional = relu_twin_cnns()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(camkit.GuidedBackprop(functional).explain(x, [0, 2]).attributions,
                               camkit.GuidedBackprop(modules).explain(x, [0, 2]).attributions)


def test_a_model_without_relus_is_said_once_and_gets_the_plain_gradient(caplog) -> None:
    vit = tiny_vit().eval()  # GELU only
    x = torch.randn(2, 3, 32, 32)
    explainer = camkit.GuidedBackprop(vit)
    with caplog.at_level(logging.WARNING, logger="camkit"):
        guided = explainer.explain(x, [0, 3]).attributions
        explainer.explain(x, [0, 3])
    said = [record for record in caplog.records if "ran no ReLU" in record.getMessage()]
    assert len(said) == 1 and "plain input gradient" in said[0].getMessage()
    torch.testing.assert_close(guided, camkit.Saliency(vit, abs=False).explain(x, [0, 3]).attributions)


def test_contract() -> None:
    check_pixel_contract("guidedbackprop")
    with pytest.raises(camkit.CamkitError, match="takes no augment"):
        camkit.GuidedBackprop(torch.nn.Linear(2, 2), augment=True)
