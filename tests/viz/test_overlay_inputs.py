"""viz.overlay and colormaps on what users pass: numpy arrays, uint8, Colormap objects, bad alphas (issue 23)."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

import camkit
from camkit.viz import colorize, colormap_lut, overlay
from camkit.viz.captions import captioned


@pytest.fixture
def images_and_maps() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 8, 10, generator=generator), torch.rand(2, 8, 10, generator=generator)


def test_numpy_arrays_give_the_tensors_result(images_and_maps) -> None:
    images, maps = images_and_maps
    torch.testing.assert_close(overlay(images.numpy(), maps.numpy()), overlay(images, maps))
    with pytest.raises(camkit.CamkitError, match=r"\(H, W, C\) layout.*permute\(2, 0, 1\)"):
        overlay(images[0].permute(1, 2, 0).numpy(), maps[:1])
    with pytest.raises(camkit.CamkitTypeError, match="torch tensor or a numpy array, got list"):
        overlay([[0.0]], maps)


def test_uint8_images_are_0_to_255(images_and_maps) -> None:
    images, maps = images_and_maps
    as_bytes = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(overlay(as_bytes, maps), overlay(as_bytes.float() / 255, maps))


@pytest.mark.parametrize("alpha", ["0.5", None, True])
def test_an_alpha_that_is_not_a_number_is_refused(images_and_maps, alpha) -> None:
    with pytest.raises(camkit.CamkitTypeError, match="alpha must be a number"):
        overlay(*images_and_maps, alpha=alpha)


def test_a_colormap_object_wherever_a_name_is(images_and_maps) -> None:
    images, maps = images_and_maps
    turbo = matplotlib.colormaps["turbo"]
    torch.testing.assert_close(colormap_lut(turbo), colormap_lut("turbo"))
    torch.testing.assert_close(colorize(maps, turbo), colorize(maps, "turbo"))
    torch.testing.assert_close(overlay(images, maps, colormap=turbo), overlay(images, maps, colormap="turbo"))
    listed = matplotlib.colors.ListedColormap([[0, 0, 0], [1, 1, 1]])
    assert colorize(torch.tensor([[[0.2, 0.9]]]), listed)[0, :, 0, :].T.tolist() == [[0, 0, 0], [1, 1, 1]]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    figure = camkit.compare(model, torch.randn(1, 3, 16, 16), ["gradcam"], colormap=turbo)
    assert figure.axes
    with pytest.raises(camkit.CamkitTypeError, match="colormap name or a matplotlib Colormap"):
        colormap_lut(42)


def test_caption_strip_keeps_the_image_and_draws_text_and_bar() -> None:
    image = torch.full((20, 120, 3), 128, dtype=torch.uint8)
    picture = captioned(image, "gradcam | explains 3 (87%)", "jet")
    assert picture.shape[1] == 120 and picture.shape[0] > 20 and torch.equal(picture[:20], image)
    strip = picture[20:]
    bar_rows = [row for row in strip if (row.int().amax(1) - row.int().amin(1) > 100).sum() > 60]
    assert bar_rows, "no colour bar"
    bar = bar_rows[0]
    coloured = bar[(bar.int().amax(1) - bar.int().amin(1)) > 0]
    # left to right the colormap from 0 to 1, as matplotlib colours each pixel's centre
    centres = (np.arange(len(coloured)) + 0.5) / len(coloured)
    expected = np.round(matplotlib.colormaps["jet"](centres)[:, :3] * 255)
    assert np.abs(coloured.numpy().astype(int) - expected).max() <= 1
    assert (strip.int().amax(2) < 60).sum() > 30  # and black text
