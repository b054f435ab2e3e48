"""Finer-CAM against pytorch-grad-cam's FinerCAM (the authors' code), a float64 reference and its base methods."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchcam.methods
import torchvision
from pytorch_grad_cam import FinerCAM as PeerFinerCAM

import camkit

from ..helpers import check_method_contract, reference_finish, tiny_cnn


def _reference(model: torch.nn.Module, x: torch.Tensor, alpha: float) -> np.ndarray:
    """Grad-CAM of z_c - alpha * sum_i p_i z_i / sum_i p_i over the 2nd-4th nearest logits, in float64."""
    model = model.double()
    store = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x.double())
    finally:
        handle.remove()
    main = logits.argmax(1)
    rivals = (logits - logits.gather(1, main[:, None])).abs().argsort(1)[:, 1:4]
    probabilities = logits.softmax(1).gather(1, rivals)
    rival_logits = logits.gather(1, rivals)
    scores = logits.gather(1, main[:, None])[:, 0] - alpha * (probabilities * rival_logits).sum(1) / probabilities.sum(1)
    (gradients,) = torch.autograd.grad(scores.sum(), store["a"])
    model.float()
    return reference_finish((gradients.mean((2, 3))[:, :, None, None] * store["a"].detach()).sum(1), tuple(x.shape[2:]))


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_finercam_equals_the_authors_objective_and_pytorch_grad_cam(alpha) -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 96)
    ours = camkit.FinerCAM(model, "layer4", alpha=alpha)(x)
    np.testing.assert_allclose(ours.numpy(), _reference(model, x, alpha), atol=1e-4)
    peer = PeerFinerCAM(model=model, target_layers=[model.layer4])
    try:
        theirs = peer(input_tensor=x, targets=None, alpha=alpha)
    finally:
        peer.base_cam.activations_and_grads.release()
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


def test_finercam_with_alpha_zero_is_its_base_method() -> None:
    model, x = tiny_cnn(), torch.randn(3, 3, 10, 10)
    for base in (camkit.GradCAM, camkit.LayerCAM, camkit.HiResCAM):
        torch.testing.assert_close(camkit.FinerCAM(model, "3", alpha=0.0, base=base)(x, [0, 1, 2]),
                                   base(model, "3")(x, [0, 1, 2]))
    result = camkit.FinerCAM(model, "3").explain(x, [0, 1, 2])
    assert result.targets.tolist() == [0, 1, 2]
    with pytest.raises(camkit.CamkitTypeError, match="gradient method"):
        camkit.FinerCAM(model, "3", base=camkit.EigenCAM)
    with pytest.raises(camkit.CamkitError, match="reference_ranks"):
        camkit.FinerCAM(model, "3", reference_ranks=(0,))


def test_finercam_contract() -> None:
    check_method_contract("finercam")


def test_finercam_with_explicit_comparison_classes_equals_torchcam() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(2, 3, 64, 64), [1, 7]
    references = [[2, 3, 4], [0, 5, 9]]
    ours = camkit.FinerCAM(model, "layer4", alpha=0.6, comparison_classes=references, weighting="mean")(x, classes)
    with torchcam.methods.FinerCAM(model, "layer4", gamma=0.6) as extractor:
        cams = extractor(classes, model(x), comparison_idx=references, normalized=False)
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(ours.numpy(), reference_finish(cams[0].detach(), (64, 64)), atol=1e-3)
    # One list for every image, the authors' softmax weights: the rivals' logits weighted by their softmax.
    logits = model(x).detach()
    rivals = logits[:, [3, 4]]
    expected = (logits.gather(1, torch.tensor(classes)[:, None])[:, 0]
                - (rivals.softmax(1) * rivals).sum(1))
    explained = camkit.FinerCAM(model, "layer4", comparison_classes=[3, 4]).explain(x, classes)
    torch.testing.assert_close(explained.scores, expected)
    with pytest.raises(camkit.CamkitError, match="explained class"):
        camkit.FinerCAM(model, "layer4", comparison_classes=[1, 2])(x, classes)
    with pytest.raises(camkit.CamkitError, match="rows for a batch"):
        camkit.FinerCAM(model, "layer4", comparison_classes=[[2], [3], [4]])(x, classes)
    with pytest.raises(camkit.CamkitError, match="weighting"):
        camkit.FinerCAM(model, "layer4", weighting="max")
