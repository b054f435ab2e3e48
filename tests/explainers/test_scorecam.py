"""Score-CAM against a per-image, per-channel reference of the authors' algorithm; chunking and options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camkit

from ..helpers import check_refuses_nan_scores, forward_batch_sizes, no_hooks_left, tiny_strided_cnn

LAYER = "3"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = tiny_strided_cnn()
    with torch.no_grad():  # channel 5 is zero everywhere: constant, so skipped
        net[2].weight[5] = 0
        net[2].bias[5] = 0
    return net


def authors_scorecam(model, x, classes, top_channels=None) -> np.ndarray:
    """The Score-CAM authors' loop, one image and one channel at a time, in float64 where it is ours."""
    store = {}
    handle = model[3].register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    maps = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            image = x[b : b + 1]
            model(image)
            activations = store["a"][0]
            norms = activations.flatten(1).norm(dim=1)
            kept = range(len(activations)) if top_channels is None else norms.topk(top_channels).indices.tolist()
            total = torch.zeros(x.shape[2:], dtype=torch.float64)
            for k in kept:
                upsampled = F.interpolate(activations[k][None, None], size=x.shape[2:], mode="bilinear",
                                          align_corners=False)[0, 0]
                if upsampled.max() == upsampled.min():
                    continue
                mask = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
                probability = F.softmax(model(image * mask), dim=1)[0, classes[b]]
                total += float(probability) * upsampled.double()  # the authors sum the upsampled channel
            total = total.clamp_min(0)
            maps.append(((total - total.min()) / (total.max() - total.min())).numpy())
    handle.remove()
    return np.stack(maps)


def test_equals_the_authors_algorithm(model) -> None:
    x = torch.randn(3, 3, 24, 32)
    classes = [1, 4, 0]
    ours = camkit.ScoreCAM(model, LAYER)(x, classes)
    np.testing.assert_allclose(ours.numpy(), authors_scorecam(model, x, classes), atol=1e-5)
    assert no_hooks_left(model)


def test_top_channels_scores_only_the_strongest(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    ours = camkit.ScoreCAM(model, LAYER, top_channels=4)(x, [2, 3])
    np.testing.assert_allclose(ours.numpy(), authors_scorecam(model, x, [2, 3], top_channels=4), atol=1e-5)
    seen, stop = forward_batch_sizes(model)
    try:
        camkit.ScoreCAM(model, LAYER, top_channels=4)(x, [2, 3])
    finally:
        stop()
    assert sum(seen[1:]) == 2 * 4  # after the clean pass: 4 channels per image


def test_constant_channels_cost_no_forward(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    seen, stop = forward_batch_sizes(model)
    try:
        camkit.ScoreCAM(model, LAYER)(x)
    finally:
        stop()
    assert seen[0] == 2 and sum(seen[1:]) == 2 * 11  # channel 5 is never scored


def test_chunking_never_changes_the_result_and_a_tiny_budget_works(model) -> None:
    x = torch.randn(3, 3, 24, 24)
    whole = camkit.ScoreCAM(model, LAYER)(x)
    seen, stop = forward_batch_sizes(model)
    try:
        tiny = camkit.ScoreCAM(model, LAYER, memory_budget=1)(x)
    finally:
        stop()
    assert max(seen[1:]) == 1 and len(seen[1:]) == 3 * 11  # one copy per chunk
    torch.testing.assert_close(tiny, whole, atol=1e-6, rtol=0)
    per_row = 2 * 3 * 24 * 24 * 4 + 4 * 8 * 24 * 24 * 4  # masked copy + mask, and four of the largest tensors
    seen, stop = forward_batch_sizes(model)
    try:
        five = camkit.ScoreCAM(model, LAYER, memory_budget=5 * per_row)(x)
    finally:
        stop()
    assert max(seen[1:]) == 5
    torch.testing.assert_close(five, whole, atol=1e-6, rtol=0)


def test_progress_reports_every_chunk(model) -> None:
    calls = []
    camkit.ScoreCAM(model, LAYER, memory_budget=1, progress=lambda done, total: calls.append((done, total)))(
        torch.randn(1, 3, 24, 24))
    assert calls == [(done, 11) for done in range(1, 12)]


def test_a_callable_target_scores_the_masked_copies(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    maps = camkit.ScoreCAM(model, LAYER)(x, lambda out: out[:, 1] - out[:, 2])
    assert maps.shape == (2, 24, 24) and torch.isfinite(maps).all()


def test_options_are_validated(model) -> None:
    with pytest.raises(camkit.CamkitError, match="memory_budget"):
        camkit.ScoreCAM(model, memory_budget=0)
    with pytest.raises(camkit.CamkitError, match="top_channels"):
        camkit.ScoreCAM(model, top_channels=0)
    with pytest.raises(camkit.CamkitTypeError, match="progress"):
        camkit.ScoreCAM(model, progress=3)


def test_nan_scores_raise_instead_of_blank_maps() -> None:
    check_refuses_nan_scores("scorecam")
