"""Integrated Gradients: captum's defaults to 1e-3, its Riemann rules and baselines, batches that do not matter."""
from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

import camkit
from camkit.ops.filters import gaussian_blur

from ..helpers import check_pixel_contract, tiny_cnn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _setup() -> tuple[torch.nn.Module, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    return tiny_cnn().eval(), torch.randn(3, 3, 16, 12), [1, 4, 2]


def _close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance * float(theirs.abs().max()))


def test_equals_captums_defaults() -> None:
    model, x, classes = _setup()
    result = camkit.IntegratedGradients(model).explain(x, classes)
    _close(result.attributions, CaptumIntegratedGradients(model).attribute(x, target=classes), 1e-3)
    # completeness: the attributions add up to S(x) - S(0)
    with torch.no_grad():
        gap = model(x)[range(3), classes] - model(torch.zeros_like(x))[range(3), classes]
    torch.testing.assert_close(result.attributions.sum(dim=(1, 2, 3)), gap, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"])
def test_riemann_rules_and_a_tensor_baseline_equal_captum(rule: str) -> None:
    model, x, classes = _setup()
    baseline = torch.rand(1, 3, 16, 12)
    ours = camkit.IntegratedGradients(model, steps=7, rule=rule, baseline=baseline).explain(x, classes).attributions
    theirs = CaptumIntegratedGradients(model).attribute(x, baselines=baseline, target=classes, n_steps=7, method=rule)
    _close(ours, theirs, 1e-4)


def test_batches_of_steps_do_not_change_the_result_and_match_captums_internal_batches() -> None:
    model, x, classes = _setup()
    whole = camkit.IntegratedGradients(model, steps=10, batch_size=30).explain(x, classes).attributions
    for batch_size in (1, 4, 7):
        torch.testing.assert_close(
            camkit.IntegratedGradients(model, steps=10, batch_size=batch_size).explain(x, classes).attributions,
            whole, rtol=1e-5, atol=1e-7)
    theirs = CaptumIntegratedGradients(model).attribute(x, target=classes, n_steps=10, internal_batch_size=4)
    _close(whole, theirs, 1e-4)


def test_blur_and_callable_baselines() -> None:
    model, x, classes = _setup()
    blurred = camkit.IntegratedGradients(model, steps=6, baseline="blur", blur_sigma=2.0).explain(x, classes)
    by_hand = camkit.IntegratedGradients(model, steps=6, baseline=lambda images: gaussian_blur(images, 2.0))
    torch.testing.assert_close(blurred.attributions, by_hand.explain(x, classes).attributions)
    theirs = CaptumIntegratedGradients(model).attribute(x, baselines=gaussian_blur(x, 2.0), target=classes, n_steps=6)
    _close(blurred.attributions, theirs, 1e-4)
    # the blur: a normalised Gaussian, reflected at the edges, leaves a constant image unchanged
    constant = torch.full((1, 2, 5, 7), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 3.0), constant)


def test_bad_options_fail_at_construction() -> None:
    model = tiny_cnn()
    with pytest.raises(camkit.CamkitError, match="steps must be"):
        camkit.IntegratedGradients(model, steps=1)
    with pytest.raises(camkit.CamkitError, match="rule must be one of gausslegendre"):
        camkit.IntegratedGradients(model, rule="simpson")
    with pytest.raises(camkit.CamkitError, match="baseline must be"):
        camkit.IntegratedGradients(model, baseline="black")
    with pytest.raises(camkit.CamkitError, match="does not broadcast"):
        camkit.IntegratedGradients(model, steps=2, baseline=torch.zeros(2, 3, 5, 5))(torch.randn(3, 3, 8, 8))


def test_contract() -> None:
    check_pixel_contract("integratedgradients", steps=4)
