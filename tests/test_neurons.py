"""NeuronTarget, channels= and Explanation.channel_weights against Grad-CAM computed by hand from hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit
from tests.helpers import no_hooks_left, reference_capture, reference_finish, tiny_cnn, tiny_vit


def _setup():
    torch.manual_seed(0)
    return tiny_cnn().eval(), torch.randn(2, 3, 12, 12)


def _hand_gradcam(model, layer, x, score, channel_mask=None) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM from plain hooks: w = mean g, map = ReLU(sum w A), finished by DESIGN.md's rule; and w."""
    activations, gradients = reference_capture(model, layer, x, score)
    weights = gradients.mean(dim=(2, 3))
    if channel_mask is not None:
        weights = weights * channel_mask
    return reference_finish((weights[:, :, None, None] * activations).sum(1), tuple(x.shape[2:])), weights


def _neuron_score(module, pick):
    """A score of ``module``'s output read by a hook (the hand-written side of NeuronTarget), and the hook's remover."""
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, output: store.__setitem__("n", output))
    return (lambda _output: pick(store["n"])), handle.remove


@pytest.mark.parametrize(("channel", "position", "pick"), [
    (3, None, lambda n: n[:, 3].mean(dim=(1, 2))),
    ([1, 4], None, lambda n: n[:, [1, 4]].mean(dim=(2, 3)).sum(1)),
    ([1, 4], (2, 5), lambda n: n[:, [1, 4], 2, 5].sum(1)),
    (None, (0, 0), lambda n: n[:, :, 0, 0].sum(1)),
])
def test_neuron_target_equals_a_hand_computed_gradcam(channel, position, pick) -> None:
    model, x = _setup()
    score, remove = _neuron_score(model[2], pick)
    try:
        expected, _ = _hand_gradcam(model, model[1], x, score)
    finally:
        remove()
    explanation = camkit.GradCAM(model, "1").explain(x, camkit.NeuronTarget("2", channel=channel, position=position))
    np.testing.assert_allclose(explanation.maps.numpy(), expected, atol=1e-5)
    assert explanation.targets is None and no_hooks_left(model)


def test_neuron_at_the_explained_layer_itself_is_that_channel() -> None:
    model, x = _setup()
    explanation = camkit.GradCAM(model, model[2]).explain(x, camkit.NeuronTarget(model[2], channel=3))
    with torch.no_grad():
        channel = model[:3](x)[:, 3]
    # dS/dA is 1/(h w) on channel 3 only: the map is that channel's ReLU, normalised.
    np.testing.assert_allclose(explanation.maps.numpy(), reference_finish(channel, (12, 12)), atol=1e-5)
    torch.testing.assert_close(explanation.scores, channel.mean(dim=(1, 2)))


def test_neuron_target_on_tokens_drops_the_class_token_and_works_for_copies_and_perturbations() -> None:
    torch.manual_seed(0)
    model, x = tiny_vit().eval(), torch.randn(2, 3, 32, 32)
    neuron = camkit.NeuronTarget("encoder.layers.encoder_layer_1", channel=0)
    with torch.no_grad():
        tokens = {}
        handle = model.encoder.layers.encoder_layer_1.register_forward_hook(lambda _m, _i, o: tokens.setdefault("t", o))
        model(x)
        handle.remove()
    expected = tokens["t"][:, 1:, 0].mean(1)  # the 4 x 4 patch tokens, class token dropped
    layer = "encoder.layers.encoder_layer_0"
    for explainer in (camkit.GradCAM(model, layer), camkit.ScoreCAM(model, layer, top_channels=3),
                      camkit.GradCAM(model, layer, augment=True)):
        explanation = explainer.explain(x, neuron)
        torch.testing.assert_close(explanation.scores, expected, atol=1e-5, rtol=1e-5)
        assert bool(torch.isfinite(explanation.maps).all()) and no_hooks_left(model)


def test_neuron_target_refuses_wrong_channels_positions_and_plain_calls() -> None:
    model, x = _setup()
    with pytest.raises(camkit.CamkitError, match="out of range"):
        camkit.GradCAM(model, "1")(x, camkit.NeuronTarget("2", channel=8))
    with pytest.raises(camkit.CamkitError, match="not on the layer's grid"):
        camkit.GradCAM(model, "1")(x, camkit.NeuronTarget("2", channel=0, position=(12, 0)))
    with pytest.raises(camkit.CamkitError, match="explainer's target"):
        camkit.NeuronTarget("2")(model(x))
    assert no_hooks_left(model)


def test_channels_sum_only_those_feature_maps() -> None:
    model, x = _setup()
    chosen = [0, 2, 5]
    mask = torch.zeros(8, dtype=torch.float64).index_fill_(0, torch.tensor(chosen), 1)
    expected, weights = _hand_gradcam(model, model[2], x, lambda output: output[:, 1], mask)
    explanation = camkit.GradCAM(model, "2", channels=chosen).explain(x, 1)
    np.testing.assert_allclose(explanation.maps.numpy(), expected, atol=1e-5)
    torch.testing.assert_close(explanation.channel_weights.double(), weights, atol=1e-6, rtol=1e-5)
    # An element-wise method sums only those channels' contributions.
    activations, gradients = reference_capture(model, model[2], x, lambda output: output[:, 1])
    contributions = gradients * activations
    positive = contributions.sum(dim=(0, 2, 3)).topk(3).indices.tolist()  # channels whose sum is not all negative
    hires = reference_finish(contributions[:, positive].sum(1), (12, 12))
    np.testing.assert_allclose(camkit.HiResCAM(model, "2", channels=positive)(x, 1).numpy(), hires, atol=1e-5)
    with pytest.raises(camkit.CamkitError, match="go past"):
        camkit.GradCAM(model, "2", channels=[8])(x, 1)
    with pytest.raises(camkit.CamkitError, match="non-negative"):
        camkit.GradCAM(model, "2", channels=[-1])


def test_channel_weights_are_the_mean_gradient_for_gradcam_and_rank_top_channels() -> None:
    model, x = _setup()
    _, weights = _hand_gradcam(model, model[2], x, lambda output: output[:, 4])
    explanation = camkit.GradCAM(model, "2").explain(x, 4)
    torch.testing.assert_close(explanation.channel_weights.double(), weights, atol=1e-6, rtol=1e-5)
    indices, top = explanation.top_channels(3)
    expected_top, expected_indices = weights.topk(3, dim=1)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(top.double(), expected_top, atol=1e-6, rtol=1e-5)
    assert explanation.top_channels(100)[0].shape == (2, 8)
    # Channel-weighted methods report theirs (augment: the unchanged images'); others have none.
    assert camkit.ScoreCAM(model, "2").explain(x).channel_weights.shape == (2, 8)
    assert camkit.GradCAM(model, "2", augment=True).explain(x).channel_weights.shape == (2, 8)
    for other in (camkit.HiResCAM(model, "2"), camkit.EigenCAM(model, "2")):
        with pytest.raises(camkit.CamkitError, match="does not weight channels"):
            other.explain(x).top_channels(2)
