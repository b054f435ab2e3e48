"""Integrated Gradients: captum's defaults to 1e-3, its Riemann rules and baselines, batches that do not matter."""
from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

import camkit
import camkit.capture_input as capture_input
from camkit.calls import ModelCall
from camkit.ops.filters import gaussian_blur

from ..helpers import check_pixel_contract, tiny_cnn, tiny_cnn3d

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


class _FlattensWithView(torch.nn.Module):
    """``.view`` of a conv's output: a channels-last activation refuses it, so the CPU fast layout must step back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 16 * 12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).view(x.shape[0], -1))


class _ReadsTheInputTwice(torch.nn.Module):
    """A skip from the input past the first convolution: no single convolution reads the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x**2).mean(dim=(1, 2, 3))[:, None]


class _EntryBySize(torch.nn.Module):
    """A different first convolution for passes of more than four rows: the entry changes between passes."""

    def __init__(self) -> None:
        super().__init__()
        self.large, self.small = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu((self.large if x.shape[0] > 4 else self.small)(x))
        return self.head(features.mean(dim=(2, 3)))


def _without_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture_input, "_entry_conv_node", lambda scores, leaf: None)


@pytest.mark.parametrize("volumes", [False, True])
def test_summing_at_the_entry_convolution_equals_every_pass_to_the_pixels(
    volumes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = (tiny_cnn3d() if volumes else tiny_cnn()).eval()
    x = torch.randn(3, 1, 6, 7, 5) if volumes else torch.randn(3, 3, 16, 12)
    gradients, entry = capture_input.path_step_gradients(model, ModelCall.of(model, x, None), [1, 4, 2])
    assert entry is not None
    assert entry.weight.shape == model[0].weight.shape
    assert gradients.shape == model[0](x).shape  # dS/d(the convolution's output), not yet the pixels'
    summed = camkit.IntegratedGradients(model, steps=9, batch_size=4).explain(x, [1, 4, 2]).attributions
    _without_entry(monkeypatch)
    assert capture_input.path_step_gradients(model, ModelCall.of(model, x, None), [1, 4, 2])[1] is None
    per_pass = camkit.IntegratedGradients(model, steps=9, batch_size=4).explain(x, [1, 4, 2]).attributions
    torch.testing.assert_close(summed, per_pass, rtol=1e-5, atol=1e-6 * float(per_pass.abs().max()))


def test_an_input_read_twice_takes_every_gradient_to_the_pixels_and_equals_captum() -> None:
    torch.manual_seed(0)
    model, x = _ReadsTheInputTwice().eval(), torch.randn(3, 3, 16, 12)
    assert capture_input.path_step_gradients(model, ModelCall.of(model, x, None), [0, 1, 2])[1] is None
    ours = camkit.IntegratedGradients(model, steps=8).explain(x, [1, 4, 2]).attributions
    _close(ours, CaptumIntegratedGradients(model).attribute(x, target=[1, 4, 2], n_steps=8), 1e-4)


def test_an_entry_that_changes_between_passes_is_taken_back_by_its_own_transpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model, x = _EntryBySize().eval(), torch.randn(3, 3, 10, 8)
    # 3 steps x 3 images in passes of 5 and 4 rows: the large convolution, then the small one
    ours = camkit.IntegratedGradients(model, steps=3, batch_size=5).explain(x, [0, 3, 1]).attributions
    _without_entry(monkeypatch)
    plain = camkit.IntegratedGradients(model, steps=3, batch_size=5).explain(x, [0, 3, 1]).attributions
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6 * float(plain.abs().max()))


def test_channels_last_on_the_cpu_and_a_model_that_refuses_it_steps_back() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 12)
    model = tiny_cnn().eval()
    explainer = camkit.IntegratedGradients(model, steps=6)
    _close(explainer.explain(x, [1, 4, 2]).attributions,
           CaptumIntegratedGradients(model).attribute(x, target=[1, 4, 2], n_steps=6), 1e-4)
    assert explainer._channels_last is True
    viewing = _FlattensWithView().eval()
    explainer = camkit.IntegratedGradients(viewing, steps=6)
    ours = explainer.explain(x, [1, 4, 2]).attributions
    assert explainer._channels_last is False
    _close(ours, CaptumIntegratedGradients(viewing).attribute(x, target=[1, 4, 2], n_steps=6), 1e-4)


def test_default_passes_hold_eight_imagenet_images_of_pixels() -> None:
    explainer = camkit.IntegratedGradients(tiny_cnn())
    assert explainer._points_per_pass(torch.zeros(2, 3, 224, 224)) == 8
    assert explainer._points_per_pass(torch.zeros(2, 3, 160, 160)) == 15
    assert explainer._points_per_pass(torch.zeros(2, 3, 512, 512)) == 8  # never fewer than before
    assert explainer._points_per_pass(torch.zeros(20, 3, 512, 512)) == 20
    assert camkit.IntegratedGradients(tiny_cnn(), batch_size=3)._points_per_pass(torch.zeros(2, 3, 32, 32)) == 3
