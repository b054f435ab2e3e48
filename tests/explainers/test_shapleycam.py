"""ShapleyCAM against a float64 Hessian-vector product and pytorch-grad-cam, with a softmax target (H A != 0)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import ShapleyCAM as PeerShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

import camkit

from ..helpers import check_method_contract, no_hooks_left, peer_maps, reference_finish


def test_shapleycam_equals_float64_hvp_and_the_peer_on_a_softmax_score() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), torch.tensor([1, 7, 4])

    def softmax_score(output: torch.Tensor) -> torch.Tensor:
        return output.softmax(1)[torch.arange(3), classes]

    store = {}
    handle = model.layer3.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    model.double()
    try:
        scores = softmax_score(model(x.double()))
    finally:
        handle.remove()
    activations = store["a"]
    (gradients,) = torch.autograd.grad(scores.sum(), activations, create_graph=True)
    (hvp,) = torch.autograd.grad(gradients, activations, grad_outputs=activations.detach())
    model.float()
    weights = (gradients - 0.5 * hvp).detach().mean((2, 3))
    expected = reference_finish((weights[:, :, None, None] * activations.detach()).sum(1), (64, 96))
    ours = camkit.ShapleyCAM(model, "layer3")(x, softmax_score)
    np.testing.assert_allclose(ours.numpy(), np.nan_to_num(expected), atol=1e-4)  # a map all below 0 is zeros
    gradcam = camkit.GradCAM(model, "layer3")(x, softmax_score)
    assert float(hvp.abs().max()) > 0 and not np.allclose(gradcam, np.nan_to_num(expected), atol=1e-2)
    peer = PeerShapleyCAM(model, [model.layer3])
    try:
        theirs = peer(x, [ClassifierOutputSoftmaxTarget(int(c)) for c in classes])
    finally:
        peer.activations_and_grads.release()
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3)
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_shapleycam_on_a_logit_of_a_relu_network_is_gradcam_and_the_peer() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(2, 3, 64, 64), [3, 5]
    ours = camkit.ShapleyCAM(model, "layer4")(x, classes)
    torch.testing.assert_close(ours, camkit.GradCAM(model, "layer4")(x, classes))
    np.testing.assert_allclose(ours.numpy(), peer_maps(PeerShapleyCAM, model, [model.layer4], x, classes), atol=2e-3)


def test_shapleycam_under_no_grad_and_inference_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(6, 6, 3),
                                torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(6, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    expected = camkit.ShapleyCAM(model, "1")(x, 2)
    with torch.no_grad():
        torch.testing.assert_close(camkit.ShapleyCAM(model, "1")(x, 2), expected)
    with torch.inference_mode():
        torch.testing.assert_close(camkit.ShapleyCAM(model, "1")(x, 2), expected)


def test_shapleycam_contract() -> None:
    check_method_contract("shapleycam")
