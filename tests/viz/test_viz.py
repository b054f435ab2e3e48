"""Overlay numerics against matplotlib, and the displays Jupyter uses."""
from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import camkit
from camkit import viz


@pytest.mark.parametrize("name", ["jet", "viridis", "gray"])
def test_colorize_equals_matplotlib(name: str) -> None:
    n = matplotlib.colormaps[name].N
    values = torch.tensor([0.0, 1.0, 0.5, 1 / n, 1 / n - 1e-6, 2 / n, 0.999999, 0.123456, 0.75], dtype=torch.float32)
    ours = viz.colorize(values.reshape(1, 1, -1), name)[0, :, 0].T.numpy()
    expected = matplotlib.colormaps[name](values.numpy())[:, :3]
    np.testing.assert_allclose(ours, expected, atol=1e-7)


def test_overlay_blends_and_resizes() -> None:
    images = torch.rand(2, 3, 8, 6)
    maps = torch.rand(2, 8, 6)
    expected = 0.3 * viz.colorize(maps, "jet") + 0.7 * images
    torch.testing.assert_close(viz.overlay(images, maps, alpha=0.3), expected)
    small = torch.rand(2, 4, 3)
    resized = torch.nn.functional.interpolate(small[:, None], size=(8, 6), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(viz.overlay(images, small), viz.overlay(images, resized))
    gray = torch.rand(2, 1, 8, 6)
    torch.testing.assert_close(viz.overlay(gray, maps, alpha=0.0), gray.expand(-1, 3, -1, -1))


def test_unnormalize_and_uint8() -> None:
    x = torch.rand(1, 3, 4, 4)
    normalised = (x - torch.tensor(viz.IMAGENET_MEAN)[:, None, None]) / torch.tensor(viz.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(viz.unnormalize(normalised, viz.IMAGENET_MEAN, viz.IMAGENET_STD), x)
    pixels = viz.to_uint8_hwc(torch.tensor([0.0, 0.5, 1.0, 1.2]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4))
    assert pixels.shape == (1, 1, 4, 3) and pixels[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="Unknown colormap"):
        viz.colorize(torch.rand(1, 2, 2), "not-a-map")
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), alpha=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        viz.overlay(torch.rand(3, 2, 2), torch.rand(1, 2, 2))


def test_result_shows_itself_as_png(shapes_model) -> None:
    from ..shapes import CLASSES, make_shapes

    x, labels, _ = make_shapes(3, seed=1)
    result = camkit.GradCAM(shapes_model).explain(x, labels).with_display(class_names=CLASSES)
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size[0] > 100
    figure = result.figure()
    # Per image: the image, the map, its top three channels' maps, their weights' bars; and the colour bar.
    assert len(figure.axes) == 3 * 6 + 1
    assert len(result.figure(colorbar=False, top_channels=0, channel_maps=0).axes) == 3 * 2
    assert any(CLASSES[int(labels[0])] in axis.get_xlabel() for axis in figure.axes)
    # The bars are the image's top channels, largest weight on top.
    indices, weights = result.top_channels(8)
    bars = figure.axes[5]
    assert [label.get_text() for label in bars.get_yticklabels()] == [f"ch {i}" for i in indices[0].tolist()]
    assert [patch.get_width() for patch in bars.patches] == pytest.approx(weights[0].tolist())


def test_figure_draws_the_top_channels_feature_maps() -> None:
    """The panel of the largest-weight channel is that channel's activation (plain hooks), upsampled and min-max
    normalised, over the image; its caption names the channel and its weight (Grad-CAM: the mean gradient)."""
    import torch.nn.functional as F

    from camkit.ops.images import display_images
    from camkit.viz.colors import overlay, to_uint8_hwc

    from ..helpers import reference_capture, tiny_cnn

    torch.manual_seed(0)
    model, x = tiny_cnn().eval(), torch.randn(2, 3, 16, 16)
    result = camkit.GradCAM(model, "2").explain(x, [1, 3])
    activations, gradients = reference_capture(model, model[2], x, [1, 3])
    weights = gradients.mean(dim=(2, 3))
    figure = result.figure(colorbar=False, top_channels=0, channel_maps=2)
    assert len(figure.axes) == 2 * 4
    for row in range(2):
        top = int(weights[row].argmax())
        channel = F.interpolate(activations[row:row + 1, top:top + 1], size=(16, 16), mode="bilinear",
                                align_corners=False)[0, 0]
        expected = (channel - channel.min()) / (channel.max() - channel.min())
        drawn = to_uint8_hwc(overlay(display_images(x[row:row + 1]), expected[None].float(), 0.5, "jet"))[0].numpy()
        panel = np.asarray(figure.axes[row * 4 + 2].images[0].get_array()).astype(int)
        assert np.abs(panel - drawn.astype(int)).max() <= 1  # 8-bit rounding
        assert figure.axes[row * 4 + 2].get_xlabel() == f"ch {top}, w {float(weights[row, top]):.3g}"
    assert [axis.get_title() for axis in figure.axes[:4]] == ["image", "gradcam @ 2", "top channel 1", "top channel 2"]
    eigen = camkit.EigenCAM(model, "2").explain(x)  # no channel weights: no channel panels
    assert eigen.channel_activations is None and len(eigen.figure(colorbar=False).axes) == 2 * 2


def test_saved_folder_holds_the_channel_weights(shapes_model, tmp_path) -> None:
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(2, seed=1)
    result = camkit.GradCAM(shapes_model).explain(x, labels)
    folder = result.save(tmp_path / "saved")
    np.testing.assert_array_equal(np.load(folder / "channel_weights.npy"), result.channel_weights.numpy())
    assert not (camkit.HiResCAM(shapes_model).explain(x, labels).save(tmp_path / "hires") / "channel_weights.npy").exists()


def test_compare_grid_layout() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    figure = camkit.compare(model, x, methods=["gradcam", "eigencam", "cfcam"], class_names=["a", "b", "c", "d"],
                            colorbar=False)
    assert len(figure.axes) == 2 * 4
    # each column names its method and layer; a class-agnostic map says so instead of a class
    assert [axis.get_title() for axis in figure.axes[:4]] == ["image", "gradcam @ layer4", "eigencam @ layer4",
                                                              "cfcam @ layer4"]
    assert figure.axes[2].get_xlabel() == "class-agnostic" and figure.axes[1].get_xlabel().startswith("explains")
    with_bar = camkit.compare(model, x, methods=["gradcam"])  # the colour bar is on by default
    assert len(with_bar.axes) == 2 * 2 + 1


def test_compare_passes_inputs_to_every_method() -> None:
    from camkit.ops.images import display_images
    from camkit.viz.colors import overlay, to_uint8_hwc
    from camkit.viz.figures import attribution_panels

    from ..helpers import TwoInputNet

    torch.manual_seed(0)
    model, x = TwoInputNet().eval(), torch.randn(2, 3, 16, 16)
    inputs = (torch.randn(2, 4), torch.randn(5, 8))
    figure = camkit.compare(model, x, methods=["gradcam", "saliency"], layer=model.conv2, inputs=inputs,
                            colorbar=False)
    for column, method in ((1, "gradcam"), (2, "saliency")):
        result = camkit.create(method, model, model.conv2).explain(x, inputs=inputs)
        if result.attributions is None:
            drawn = to_uint8_hwc(overlay(display_images(x), result.maps, 0.5, "jet")).numpy()
        else:  # a pixel method's column is its signed attributions' picture
            drawn = to_uint8_hwc(attribution_panels(result.attributions, (16, 16))).numpy()
        np.testing.assert_array_equal(np.asarray(figure.axes[column].images[0].get_array()), drawn[0])


def test_interactive_view(shapes_model, monkeypatch) -> None:
    from camkit import interactive

    from ..shapes import make_shapes

    x, _, _ = make_shapes(2, seed=1)
    pytest.importorskip("ipywidgets")
    view = interactive.interact(shapes_model, x, methods=["gradcam", "eigencam"], class_names=["a", "b", "c", "d"])
    assert {"image", "method", "target", "alpha"} <= set(view.controls)
    view.controls["method"].value = "eigencam"  # redraws without error
    import builtins

    real_import = builtins.__import__

    def no_widgets(name, *args, **kwargs):
        if name == "ipywidgets":
            raise ImportError("no ipywidgets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    with pytest.raises(ImportError, match=r"camkit\[widgets\]"):
        interactive.interact(shapes_model, x)


def _drawn(axis) -> np.ndarray:
    return np.asarray(axis.images[0].get_array())


def test_compare_draws_a_pixel_methods_signed_attributions_instead_of_an_overlay() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    figure = camkit.compare(model, x, methods=["gradcam", "guidedbackprop"], target=[1, 2], colorbar=False)
    titles = [axis.get_title().replace("\n", " ") for axis in figure.axes[:3]]  # wrapped to the panel
    assert titles == ["image", "gradcam @ layer4", "guidedbackprop @ input: attributions"]
    attributions = camkit.GuidedBackprop(model).explain(x, [1, 2]).attributions
    for row in range(2):
        expected = viz.to_uint8_hwc(viz.attribution_picture(attributions[row:row + 1]))[0].numpy()
        np.testing.assert_allclose(_drawn(figure.axes[3 * row + 2]).astype(int), expected.astype(int), atol=1)
    # the CAM column keeps its heatmap overlay
    assert not np.array_equal(_drawn(figure.axes[1]), _drawn(figure.axes[2]))


def test_a_pixel_result_shows_its_attributions_then_its_map(shapes_model) -> None:
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(2, seed=1)
    result = camkit.GuidedGradCAM(shapes_model).explain(x, labels)
    figure = result.figure(colorbar=False)
    assert len(figure.axes) == 2 * 3
    assert figure.axes[1].get_title().endswith(": attributions") and "@" in figure.axes[2].get_title()
    expected = viz.to_uint8_hwc(viz.attribution_picture(result.attributions[:1]))[0].numpy()
    np.testing.assert_allclose(_drawn(figure.axes[1]).astype(int), expected.astype(int), atol=1)
    assert result._repr_png_().startswith(b"\x89PNG")


def test_a_saved_pixel_result_keeps_its_raw_attributions(shapes_model, tmp_path) -> None:
    from ..shapes import make_shapes

    x, labels, _ = make_shapes(2, seed=1)
    result = camkit.GuidedBackprop(shapes_model).explain(x, labels)
    folder = result.save(tmp_path / "saved")
    for index in range(2):
        np.testing.assert_array_equal(np.load(folder / f"{index:04d}_attributions.npy"),
                                      result.attributions[index].numpy())
        assert Image.open(folder / f"{index:04d}_attributions.png").size == (x.shape[3], x.shape[2])
    assert not (camkit.GradCAM(shapes_model).explain(x, labels).save(tmp_path / "cam") / "0000_attributions.npy").exists()
