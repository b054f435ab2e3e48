"""HiResCAM against pytorch-grad-cam and a float64 reference; the contract on every input kind."""
from __future__ import annotations

import pytest
from pytorch_grad_cam import HiResCAM as PeerHiResCAM

from ..helpers import check_against_float64_and_peer, check_method_contract


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_hirescam_equals_pytorch_grad_cam_and_float64(layer) -> None:
    check_against_float64_and_peer("hirescam", PeerHiResCAM, layer, lambda a, g: (g * a).sum(1))


def test_hirescam_contract() -> None:
    check_method_contract("hirescam")
