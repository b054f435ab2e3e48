"""Metrics against hand-computed values, plus their defining properties."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camkit
from camkit import metrics


class PixelModel(nn.Module):
    """Two classes scored by the mean of the top-left and of the bottom-right pixel: softmax by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack((x[:, 0, 0, 0] * 4, x[:, 0, -1, -1] * 4), dim=1)


def test_pointing_game_and_ties() -> None:
    maps = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.2, 0.1], [0.9, 0.3]]])
    masks = torch.tensor([[[False, True], [False, False]], [[True, False], [False, False]]])
    # image 0: two maxima, the first in row-major order (0, 1) is inside; image 1: peak outside
    assert metrics.pointing_game(maps, masks).tolist() == [1.0, 0.0]
    masks[0] = torch.tensor([[False, False], [True, False]])
    assert metrics.pointing_game(maps, masks).tolist() == [0.0, 0.0]


def test_energy_pointing_game_by_hand() -> None:
    maps = torch.tensor([[[0.5, 0.5], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[True, False], [True, False]], [[True, True], [True, True]]])
    torch.testing.assert_close(metrics.energy_pointing_game(maps, masks), torch.tensor([0.75, 0.0]))


def test_boxes_to_masks() -> None:
    masks = metrics.boxes_to_masks(torch.tensor([[1, 0, 3, 2]]), height=3, width=4)
    assert masks[0].int().tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_average_drop_and_increase_by_hand() -> None:
    x = torch.ones(2, 1, 2, 2)
    maps = torch.tensor([[[0.5, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.25]]])
    # image 0, class 0: logits (4, 4) -> Y = 0.5; masked (2, 4) -> O = 1 / (1 + e^2)
    o0 = 1 / (1 + math.exp(2))
    # image 1, class 0: masked logits (4, 1) -> O = 1 / (1 + e^-3) > Y = 0.5
    o1 = 1 / (1 + math.exp(-3))
    drop = metrics.average_drop(PixelModel(), x, maps, target=0)
    torch.testing.assert_close(drop, torch.tensor([100 * (0.5 - o0) / 0.5, 0.0]))
    assert metrics.increase_in_confidence(PixelModel(), x, maps, target=0).tolist() == [0.0, 100.0]
    assert o1 > 0.5
    ones = torch.ones(2, 2, 2)
    assert metrics.average_drop(PixelModel(), torch.rand(2, 1, 2, 2), ones).tolist() == [0.0, 0.0]


def test_deletion_curve_by_hand() -> None:
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])  # remove (0,0) first, then (1,1)
    area, curves = metrics.deletion(PixelModel(), x, maps, target=0, steps=4, baseline="zero", return_curves=True)
    p = lambda a, b: 1 / (1 + math.exp(4 * (b - a)))  # noqa: E731 - softmax of class 0
    expected = [p(1, 1), p(0, 1), p(0, 0), p(0, 0), p(0, 0)]
    torch.testing.assert_close(curves[0], torch.tensor(expected))
    trapezoid = sum((expected[i] + expected[i + 1]) / 2 for i in range(4)) / 4
    assert area.item() == pytest.approx(trapezoid, abs=1e-6)


def test_good_map_beats_its_inverse(shapes_model) -> None:
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(16, seed=3)
    good = camkit.GradCAM(shapes_model)(x, labels)
    inverse = 1 - good
    assert metrics.deletion(shapes_model, x, good, labels).mean() < metrics.deletion(shapes_model, x, inverse, labels).mean()
    # zero is the toy task's background mean; a blurred shape would still show the class
    assert (metrics.insertion(shapes_model, x, good, labels, baseline="zero").mean()
            > metrics.insertion(shapes_model, x, inverse, labels, baseline="zero").mean())


def test_memory_bounded_by_chunk_size(shapes_model) -> None:
    seen = []
    handle = shapes_model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    try:
        x = torch.randn(3, 3, 32, 32)
        metrics.insertion(shapes_model, x, torch.rand(3, 32, 32), steps=10, chunk_size=8)
    finally:
        handle.remove()
    assert seen[0] == 3 and max(seen[1:]) <= 8 and sum(seen[1:]) == 3 * 11


def test_sanity_checks(shapes_model) -> None:
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(8, seed=5)
    other = (labels + 1) % 4
    eigen = metrics.class_sensitivity(camkit.EigenCAM(shapes_model), x, labels, other)
    torch.testing.assert_close(eigen, torch.ones(8))
    assert metrics.class_sensitivity(camkit.GradCAM(shapes_model), x, labels, other).mean() < 0.5
    before = {name: value.clone() for name, value in shapes_model.state_dict().items()}
    randomised = metrics.model_randomisation(camkit.GradCAM, shapes_model, x)
    assert randomised.shape == (8,) and randomised.mean() < 0.9
    assert all(torch.equal(before[name], value) for name, value in shapes_model.state_dict().items())


def test_bad_shapes() -> None:
    with pytest.raises(camkit.CamkitError, match="match the maps"):
        metrics.pointing_game(torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(camkit.CamkitTypeError, match="bool"):
        metrics.energy_pointing_game(torch.rand(2, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(camkit.CamkitError, match="to match x"):
        metrics.deletion(PixelModel(), torch.rand(2, 1, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(camkit.CamkitError, match="baseline"):
        metrics.insertion(PixelModel(), torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), baseline="noise")


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 1, 4, 5), (2, 4)])
def test_a_baseline_that_does_not_fit_the_images_is_a_clear_error(shape) -> None:
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(camkit.CamkitError, match=r"baseline of shape .* does not fit the images \(2, 1, 4, 4\)"):
        metrics.deletion(PixelModel(), x, torch.rand(2, 4, 4), baseline=torch.zeros(shape))


def test_a_baseline_that_broadcasts_is_used() -> None:
    x = torch.rand(2, 1, 4, 4)
    maps = torch.rand(2, 4, 4)
    for baseline in (torch.zeros(1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 1, 1)):
        torch.testing.assert_close(metrics.deletion(PixelModel(), x, maps, baseline=baseline),
                                   metrics.deletion(PixelModel(), x, maps, baseline="zero"))


class KeptFractionModel(nn.Module):
    """Class 0's probability is 0.01 + 0.98 k^2, k the mean of the input (the fraction of ones kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = 0.01 + 0.98 * x.flatten(1).mean(dim=1) ** 2
        return torch.stack((p.log(), (1 - p).log()), dim=1)


def test_deletion_area_uses_the_fraction_really_removed() -> None:
    # 7 pixels in 3 steps: the counts removed are round(0, 7/3, 14/3, 7) = 0, 2, 5, 7, so the steps
    # are 2/7, 3/7 and 2/7 wide, not 1/3 each.
    x = torch.ones(1, 1, 1, 7)
    maps = torch.linspace(1, 0, 7).reshape(1, 1, 7)
    area, curves = metrics.deletion(KeptFractionModel(), x, maps, target=0, steps=3, return_curves=True)
    removed = [0, 2 / 7, 5 / 7, 1]
    probability = [0.01 + 0.98 * (1 - f) ** 2 for f in removed]
    torch.testing.assert_close(curves[0], torch.tensor(probability), atol=1e-6, rtol=0)
    by_hand = sum((removed[i + 1] - removed[i]) * (probability[i] + probability[i + 1]) / 2 for i in range(3))
    nominal = sum((probability[i] + probability[i + 1]) / 2 for i in range(3)) / 3
    assert area.item() == pytest.approx(by_hand, abs=1e-6) and abs(by_hand - nominal) > 5e-3
    inserted = metrics.insertion(KeptFractionModel(), x, maps, target=0, steps=3, baseline="zero")
    kept = [0.01 + 0.98 * f**2 for f in removed]
    assert inserted.item() == pytest.approx(
        sum((removed[i + 1] - removed[i]) * (kept[i] + kept[i + 1]) / 2 for i in range(3)), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda(shapes_model) -> None:
    from ..shapes import make_shapes

    model = shapes_model.cuda()
    try:
        x, labels, masks = (t.cuda() for t in make_shapes(4, seed=1))
        maps = camkit.GradCAM(model)(x, labels)
        for value in (metrics.pointing_game(maps, masks), metrics.deletion(model, x, maps, labels),
                      metrics.average_drop(model, x, maps, labels)):
            assert value.device.type == "cuda"
    finally:
        shapes_model.cpu()


def test_a_callable_target_gives_the_same_as_its_class_when_it_returns_the_probability() -> None:
    x = torch.rand(3, 1, 4, 4)
    maps = torch.rand(3, 4, 4)
    classes = torch.tensor([0, 1, 0])

    def probability(output: torch.Tensor) -> torch.Tensor:
        return output.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)

    for metric in (metrics.deletion, metrics.insertion, metrics.average_drop, metrics.increase_in_confidence):
        torch.testing.assert_close(metric(PixelModel(), x, maps, probability), metric(PixelModel(), x, maps, classes))


def test_a_callable_target_sees_whole_batches_in_order() -> None:
    # A per-image target (here: the logit of each image's own class, picked by batch position) only makes
    # sense if every pass it scores is the B images in their order.
    from ..helpers import forward_batch_sizes

    model = PixelModel()
    classes = torch.tensor([1, 0, 1, 1, 0])
    x, maps = torch.rand(5, 1, 4, 4), torch.rand(5, 4, 4)
    sizes, stop = forward_batch_sizes(model)
    try:
        area, curves = metrics.deletion(model, x, maps, lambda out: out.gather(1, classes[:, None]).squeeze(1),
                                        steps=4, chunk_size=2, return_curves=True)
    finally:
        stop()
    assert set(sizes) == {5} and len(sizes) == 1 + 5
    with torch.no_grad():
        assert curves[:, 0].tolist() == model(x).gather(1, classes[:, None]).squeeze(1).tolist()


def test_average_drop_is_nan_where_the_clean_score_is_not_positive() -> None:
    x = torch.ones(2, 1, 2, 2)
    x[1] = -1  # image 1's logits are negative: a drop relative to them is undefined
    maps = torch.full((2, 2, 2), 0.5)
    drop = metrics.average_drop(PixelModel(), x, maps, lambda out: out[:, 0])
    assert drop[0].item() == pytest.approx(50.0) and torch.isnan(drop[1])


def test_a_callable_baseline_is_called_on_the_images() -> None:
    x, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4)
    half = lambda images: images / 2  # noqa: E731
    torch.testing.assert_close(metrics.deletion(PixelModel(), x, maps, baseline=half),
                               metrics.deletion(PixelModel(), x, maps, baseline=x / 2))
    # average drop blends the image into the baseline by the map: x * m + b * (1 - m)
    blended = x * maps[:, None] + (x / 2) * (1 - maps[:, None])
    with torch.no_grad():
        clean, kept = PixelModel()(x).softmax(1)[:, 0], PixelModel()(blended).softmax(1)[:, 0]
    torch.testing.assert_close(metrics.average_drop(PixelModel(), x, maps, 0, baseline=half),
                               100 * (clean - kept).clamp_min(0) / clean)
    with pytest.raises(camkit.CamkitError, match=r"baseline of shape \(2, 1, 4\) does not fit"):
        metrics.insertion(PixelModel(), x, maps, baseline=lambda images: images[..., 0])
    with pytest.raises(camkit.CamkitTypeError, match="baseline callable returned float"):
        metrics.insertion(PixelModel(), x, maps, baseline=lambda images: 0.0)


class VoxelModel(nn.Module):
    """Two classes scored by the first and the last voxel of a volume: softmax by hand, as PixelModel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack((x[:, 0, 0, 0, 0] * 4, x[:, 0, -1, -1, -1] * 4), dim=1)


def test_volumes_deletion_average_drop_and_pointing_by_hand() -> None:
    x = torch.ones(1, 1, 2, 2, 2)
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0, 0, 0], maps[0, 1, 1, 1] = 1.0, 0.5  # remove the first voxel, then the last
    area, curves = metrics.deletion(VoxelModel(), x, maps, target=0, steps=8, return_curves=True)
    p = lambda a, b: 1 / (1 + math.exp(4 * (b - a)))  # noqa: E731 - softmax of class 0
    expected = [p(1, 1), p(0, 1)] + [p(0, 0)] * 7
    torch.testing.assert_close(curves[0], torch.tensor(expected))
    assert area.item() == pytest.approx(sum((expected[i] + expected[i + 1]) / 2 for i in range(8)) / 8, abs=1e-6)
    # average drop: masked logits (4 * 1, 4 * 0.5) -> O = 1 / (1 + e^-2), Y = 0.5, no drop
    assert metrics.average_drop(VoxelModel(), x, maps, 0).item() == 0.0
    assert metrics.increase_in_confidence(VoxelModel(), x, maps, 0).item() == 100.0
    masks = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    assert metrics.pointing_game(maps, masks).tolist() == [1.0]
    assert metrics.energy_pointing_game(maps, masks).item() == pytest.approx(1 / 1.5)


def test_blurred_volume_constant_along_depth_equals_the_blurred_slices() -> None:
    from camkit.metrics.faithfulness import reference_images

    image = torch.rand(2, 3, 16, 16)
    volume = image[:, :, None].expand(2, 3, 5, 16, 16).contiguous()
    blurred = reference_images(volume, "blur")
    for depth in range(5):
        torch.testing.assert_close(blurred[:, :, depth], reference_images(image, "blur"))
    torch.testing.assert_close(reference_images(volume, "mean"), volume.mean(dim=(2, 3, 4), keepdim=True).expand_as(volume))


def test_volume_shapes_that_do_not_match_are_clear_errors() -> None:
    volume = torch.rand(2, 1, 3, 4, 4)
    with pytest.raises(camkit.CamkitError, match=r"maps must have shape \(B, D, H, W\) = \(2, 3, 4, 4\)"):
        metrics.deletion(VoxelModel(), volume, torch.rand(2, 4, 4))
    with pytest.raises(camkit.CamkitError, match=r"x must have shape \(B, C, H, W\), or \(B, C, D, H, W\)"):
        metrics.average_drop(VoxelModel(), torch.rand(2, 3, 4), torch.rand(2, 3, 4))
    with pytest.raises(camkit.CamkitError, match="match the maps"):
        metrics.pointing_game(torch.rand(2, 3, 4, 4), torch.ones(2, 3, 4, 5, dtype=torch.bool))


@pytest.mark.parametrize("metric", [metrics.deletion, metrics.insertion])
def test_progress_counts_every_perturbed_copy_and_changes_no_value(metric) -> None:
    import io
    import re

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5)).eval()
    x, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    quiet = metric(model, x, maps, steps=4, chunk_size=4)
    stream = io.StringIO()
    shown = metric(model, x, maps, steps=4, chunk_size=4, progress=stream)
    assert torch.equal(quiet, shown)
    text = stream.getvalue()
    assert f"camkit {metric.__name__}" in text and re.search(r"\b15/15 copy\b", text), text  # 3 images x 5 steps
    assert re.search(r"(copy/s|s/copy)", text), text
