"""Saliency: captum's Saliency (abs and signed) to 1e-4; the map is Simonyan et al.'s max over channels."""
from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Saliency as CaptumSaliency

import camkit

from ..helpers import check_pixel_contract, reference_normalise

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("absolute", [True, False])
def test_equals_captum(absolute: bool) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 48, 64), [1, 7, 4]
    result = camkit.Saliency(model, abs=absolute).explain(x, classes)
    theirs = CaptumSaliency(model).attribute(x.clone(), target=classes, abs=absolute)
    torch.testing.assert_close(result.attributions, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
    torch.testing.assert_close(result.maps.double(), reference_normalise(theirs.abs().amax(1)), atol=1e-5, rtol=0)


def test_contract() -> None:
    check_pixel_contract("saliency")
    check_pixel_contract("saliency", abs=False)
    with pytest.raises(camkit.CamkitTypeError, match="abs must be"):
        camkit.Saliency(torch.nn.Linear(2, 2), abs="yes")
