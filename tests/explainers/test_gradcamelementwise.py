"""Element-wise Grad-CAM against pytorch-grad-cam and a float64 reference; the contract on every input kind."""
from __future__ import annotations

from pytorch_grad_cam import GradCAMElementWise as PeerGradCAMElementWise

from ..helpers import check_against_float64_and_peer, check_method_contract


def test_gradcamelementwise_equals_pytorch_grad_cam_and_float64() -> None:
    check_against_float64_and_peer("gradcamelementwise", PeerGradCAMElementWise, "layer3",
                                   lambda a, g: (g * a).clamp_min(0).sum(1))


def test_gradcamelementwise_contract() -> None:
    check_method_contract("gradcamelementwise")
