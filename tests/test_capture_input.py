"""capture_input: gradients at the input, the guided-ReLU rule for every ReLU form, nothing left behind."""
from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch.overrides import _get_current_function_mode_stack

import camkit
from camkit.capture_input import forward_scores, guided_relus, input_gradients

from .helpers import no_hooks_left, relu_twin_cnns


def test_input_gradients_equal_autograd_and_write_no_parameter_grad() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    leaf = x.clone().requires_grad_(True)
    model(leaf)[torch.arange(2), torch.tensor([1, 3])].sum().backward()
    model.zero_grad(set_to_none=True)
    with torch.inference_mode():
        captured = input_gradients(model, x.clone(), [1, 3])
    torch.testing.assert_close(captured.gradients, leaf.grad, rtol=1e-5, atol=1e-7)
    assert captured.classes.tolist() == [1, 3] and captured.relus == 0
    assert all(p.grad is None for p in model.parameters()) and no_hooks_left(model)


def test_the_guided_rule_covers_every_relu_form() -> None:
    modules, functional = relu_twin_cnns()
    x = torch.randn(3, 3, 12, 12)
    theirs = CaptumGuidedBackprop(modules).attribute(x.clone(), target=[0, 1, 3])
    for model in (modules, functional):
        captured = input_gradients(model, x, [0, 1, 3], guided=True)
        assert captured.relus == 6, type(model).__name__
        torch.testing.assert_close(captured.gradients, theirs, rtol=1e-4, atol=1e-7)
    # The peers guide nn.ReLU modules only: on the functional twin they silently give another answer.
    assert not torch.allclose(CaptumGuidedBackprop(functional).attribute(x.clone(), target=[0, 1, 3]), theirs)


def test_guided_relu_forward_is_relu_and_in_place_forms_still_modify_their_input() -> None:
    x = torch.randn(4, 5, requires_grad=True)
    with guided_relus():
        y = x * 1
        y.relu_()
        z = torch.nn.functional.relu(x * 1, inplace=True)
    torch.testing.assert_close(y, x.relu())
    torch.testing.assert_close(z, x.relu())
    grad, = torch.autograd.grad((y * torch.randn(4, 5)).sum(), x)
    assert (grad >= 0).all() and (grad[x <= 0] == 0).all()


class Boom(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.relu(self.conv(x))
        raise RuntimeError("boom")


def test_nothing_is_left_behind_after_an_exception() -> None:
    model = Boom()
    model.train()
    for guided, modules in ((True, ()), (False, [model.conv])):
        with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
            input_gradients(model, torch.randn(1, 3, 8, 8), 0, guided=guided, modules=modules)
    assert torch.is_grad_enabled() and model.training and model.conv.training
    assert _get_current_function_mode_stack() == [] and no_hooks_left(model)
    assert all(p.grad is None for p in model.parameters())
    # an explainer on top of it: the same
    with pytest.raises(RuntimeError, match="boom"):
        camkit.GuidedBackprop(model)(torch.randn(1, 3, 8, 8), 0)
    assert _get_current_function_mode_stack() == [] and no_hooks_left(model) and model.training


def test_watched_modules_give_their_pre_in_place_outputs_and_gradients() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()  # bn1 is followed by ReLU(inplace=True)
    x = torch.randn(1, 3, 32, 32)
    captured = input_gradients(model, x, 2, modules=[model.bn1])
    store = {}
    handle = model.bn1.register_forward_hook(lambda _m, _i, out: store.update(a=out.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert captured.modules == [model.bn1] and (captured.module_outputs[0] < 0).any()
    torch.testing.assert_close(captured.module_outputs[0], store["a"])
    assert captured.module_gradients[0].shape == store["a"].shape


def test_forward_scores_under_no_grad_give_the_explained_classes() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output, scores, classes = forward_scores(model, x, None)
    assert classes.tolist() == output.argmax(1).tolist() and not scores.requires_grad
