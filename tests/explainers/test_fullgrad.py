"""FullGrad: pytorch-grad-cam's FullGrad (rescale="channel") and the authors' code (rescale="layer")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import FullGrad as PeerFullGrad

import camkit

from ..helpers import check_pixel_contract, reference_normalise

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for module in model.modules():  # BatchNorm with non-trivial statistics: the effective bias matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.3, 0.3)
    return model


def _peer(model: torch.nn.Module, x: torch.Tensor, scores) -> np.ndarray:
    peer = PeerFullGrad(model, [])
    try:
        return peer(input_tensor=x, targets=scores)
    finally:
        peer.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


def test_channel_rescaling_equals_pytorch_grad_cam_on_raw_logits() -> None:
    model, x, classes = _resnet(), torch.randn(2, 3, 48, 64), [1, 7]
    ours = camkit.FullGrad(model, rescale="channel")(x, classes).numpy()
    theirs = _peer(model, x, [lambda out, c=c: out[c] for c in classes])
    np.testing.assert_allclose(ours, theirs, atol=2e-3)  # the bound
    np.testing.assert_allclose(ours, theirs, atol=2e-5)  # measured: 2.4e-6, float32 rounding


def test_the_difference_exact_min_max_makes_is_pytorch_grad_cams_epsilon_alone() -> None:
    model, x, classes = _resnet(), torch.randn(2, 3, 48, 64), [1, 7]
    exact = camkit.FullGrad(model, rescale="channel", epsilon=0)
    # On raw logits some channels' |b * g| spans ~1e-7, where their max + 1e-7 damps the channel: maps move.
    raw_gap = np.abs(exact(x, classes).numpy() - _peer(model, x, [lambda out, c=c: out[c] for c in classes])).max()
    assert 1e-4 < raw_gap < 5e-3
    # Scale the score so that 1e-7 is negligible against every span: exact min-max is then theirs too.
    scale = 1e4
    scaled = exact(x, lambda out: scale * out[torch.arange(2), torch.tensor(classes)]).numpy()
    np.testing.assert_allclose(scaled, _peer(model, x, [lambda out, c=c: scale * out[c] for c in classes]), atol=1e-5)
    # Exact min-max does not care about the scale; the reference epsilon does.
    np.testing.assert_allclose(scaled, exact(x, classes).numpy(), atol=1e-5)


def _authors_reference(model: torch.nn.Module, x: torch.Tensor, classes: list[int], eps: float) -> torch.Tensor:
    """The authors' saliency (idiap/fullgrad-saliency), written from their code path in float64:
    each term (t - min) / (max(t - min) + eps), eps=1e-6 in their _postProcess."""
    model = model.double()
    biased, outputs = [], []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None or isinstance(module, torch.nn.BatchNorm2d):
            biased.append(module)
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o)) or o.clone()) for m in biased]
    leaf = x.double().requires_grad_(True)
    try:
        score = model(leaf)[torch.arange(len(classes)), torch.tensor(classes)].sum()
    finally:
        for hook in hooks:
            hook.remove()
    grads = torch.autograd.grad(score, [leaf, *[o for _, o in outputs]])

    def post(t: torch.Tensor) -> torch.Tensor:
        flat = t.abs().flatten(1)
        low, high = flat.min(1).values, (flat - flat.min(1, keepdim=True).values).max(1).values
        shape = (-1,) + (1,) * (t.dim() - 1)
        return (t.abs() - low.reshape(shape)) / (high.reshape(shape) + eps)

    cam = post(grads[0] * leaf).sum(1, keepdim=True)
    for (module, _), g in zip(outputs, grads[1:]):
        if isinstance(module, torch.nn.BatchNorm2d):
            bias = module.bias - module.running_mean * module.weight / torch.sqrt(module.running_var + module.eps)
        else:
            bias = module.bias
        term = post(g * bias.reshape(1, -1, 1, 1))
        cam = cam + F.interpolate(term, size=x.shape[2:], mode="bilinear", align_corners=True).sum(1, keepdim=True)
    model.float()
    return cam[:, 0].detach()


@pytest.mark.parametrize("epsilon", [None, 0.0])
def test_layer_rescaling_equals_the_authors_code(epsilon) -> None:
    model, x, classes = _resnet(), torch.randn(2, 3, 40, 56), [3, 5]
    result = camkit.FullGrad(model, epsilon=epsilon).explain(x, classes)
    reference = _authors_reference(model, x, classes, eps=1e-6 if epsilon is None else epsilon)
    torch.testing.assert_close(result.attributions[:, 0].double(), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.maps.double(), reference_normalise(reference), atol=1e-5, rtol=0)
    assert all(p.grad is None for p in model.parameters())


def test_contract() -> None:
    check_pixel_contract("fullgrad")
    check_pixel_contract("fullgrad", rescale="channel")
    with pytest.raises(camkit.CamkitError, match="rescale must be"):
        camkit.FullGrad(torch.nn.Linear(2, 2), rescale="image")
    with pytest.raises(camkit.CamkitError, match="epsilon must be"):
        camkit.FullGrad(torch.nn.Linear(2, 2), epsilon=-1e-7)
    assert camkit.FullGrad(torch.nn.Linear(2, 2)).epsilon == 1e-6
    assert camkit.FullGrad(torch.nn.Linear(2, 2), rescale="channel").epsilon == 1e-7
