"""Bad input through the Python API: each case a CamkitError that says what to do, or accepted sensibly (issue 23)."""
from __future__ import annotations

import warnings

import pytest
import torch

import camkit

from ..helpers import quick_options, tiny_cnn, tiny_vit

# The methods for a CNN whose maps repeat from call to call: the attention methods need a transformer, and
# RandomCAM draws new weights on every call.
METHOD_CLASSES = [cls for name, cls in camkit.METHODS.items()
                  if name != "randomcam" and not issubclass(cls, camkit.AttentionExplainer)]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make", ["script", "trace"])
def test_torchscript_models_are_refused_naming_torch_export(model, x, make) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation warnings for torch.jit
        scripted = torch.jit.script(model) if make == "script" else torch.jit.trace(model, x)
    for layer in (None, "2"):
        with pytest.raises(camkit.CamkitError, match="TorchScript.*torch.export"):
            camkit.GradCAM(scripted, layer)(x)


def test_a_torchscript_target_layer_is_refused(x) -> None:
    inner = tiny_cnn().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner[0] = torch.jit.script(inner[0])
    with pytest.raises(camkit.CamkitError, match="target layer '0' is TorchScript"):
        camkit.GradCAM(inner, "0")


def test_zero_height_images_and_other_channel_counts(model) -> None:
    with pytest.raises(camkit.CamkitError, match="no pixels"):
        camkit.GradCAM(model)(torch.randn(2, 3, 0, 16))
    with pytest.raises(camkit.CamkitError, match="takes 3-channel images, but x has 1.*expand"):
        camkit.GradCAM(model)(torch.randn(2, 1, 16, 16))


def test_unknown_options_name_the_valid_ones(model) -> None:
    with pytest.raises(camkit.CamkitTypeError, match="GradCAM has no option 'foo'.*batch_size"):
        camkit.GradCAM(model, foo=1)
    with pytest.raises(camkit.CamkitTypeError, match="ScoreCAM has no option 'n_sample'.*top_channels"):
        camkit.ScoreCAM(model, n_sample=2)


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda cls: cls.name)
def test_class_column_and_tensors_on_other_devices(model, x, cls) -> None:
    cam = cls(model, **quick_options(cls))
    expected = cam(x, [1, 2])
    torch.testing.assert_close(cam(x, torch.tensor([[1], [2]])), expected)  # (B, 1): one class per image
    with pytest.raises(camkit.CamkitError, match="meta device"):
        cam(x, torch.tensor([1, 2], device="meta"))


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda cls: cls.name)
def test_one_callable_per_image_equals_class_indices(model, x, cls) -> None:
    """pytorch-grad-cam's convention: callable i gets image i's output row; every method (pixel methods and
    their path copies included), augment's copies too where the method takes augment."""
    options = quick_options(cls)
    cam = cls(model, **options)
    # Score-CAM and its variants score a class by its softmax probability, the others by its logit.
    if issubclass(cls, camkit.ScoreCAM):
        per_image = [lambda row: row.softmax(0)[1], lambda row: row.softmax(0)[2]]
    else:
        per_image = [lambda row: row[1], lambda row: row[2]]
    if cls.name in ("cam", "finercam"):  # they need class logits, not scores: refused in one line
        with pytest.raises(camkit.CamkitError, match="class index"):
            cam(x, per_image)
        return
    torch.testing.assert_close(cam(x, per_image), cam(x, [1, 2]), atol=1e-5, rtol=1e-4)
    if issubclass(cls, camkit.PixelExplainer) and not cls.reads_layer:
        return  # no augment for methods that explain pixels
    augmented = cls(model, augment=True, **options)
    torch.testing.assert_close(augmented(x, per_image), augmented(x, [1, 2]), atol=1e-5, rtol=1e-4)


def test_per_image_callables_are_checked(model, x) -> None:
    cam = camkit.GradCAM(model)
    with pytest.raises(camkit.CamkitError, match="3 callables for a batch of 2"):
        cam(x, [lambda row: row[0]] * 3)
    with pytest.raises(camkit.CamkitTypeError, match="mixes callables"):
        cam(x, [lambda row: row[0], 1])
    with pytest.raises(camkit.CamkitTypeError, match="returned float"):
        cam(x, [lambda row: 1.0, lambda row: 2.0])


def test_class_names_as_targets(model, x) -> None:
    names = ["cat", "dog", "goldfish", "tench", "zebra"]
    cam = camkit.GradCAM(model, class_names=names)
    torch.testing.assert_close(cam(x, "goldfish"), cam(x, 2))
    torch.testing.assert_close(cam(x, ["goldfish", "dog"]), cam(x, [2, 1]))
    assert cam.explain(x, "goldfish").class_name(2) == "goldfish"
    with pytest.raises(camkit.CamkitError, match="no class named 'goldfsh'; did you mean 'goldfish'"):
        cam(x, "goldfsh")
    with pytest.raises(camkit.CamkitError, match="has no class names: pass class_names="):
        camkit.GradCAM(model)(x, "goldfish")
    model.class_names = names  # a model that carries its names (as `--model package.module:factory` may)
    try:
        torch.testing.assert_close(camkit.GradCAM(model)(x, "goldfish"), cam(x, 2))
    finally:
        del model.class_names


@pytest.mark.parametrize("alpha", [True, "0.6", float("nan"), float("inf")])
def test_finercam_refuses_alpha_that_is_not_a_finite_number(model, alpha) -> None:
    with pytest.raises(camkit.CamkitTypeError, match="alpha must be a finite number"):
        camkit.FinerCAM(model, alpha=alpha)


@pytest.mark.parametrize("ranks", [(True,), (1.0,), "12", (0,), ()])
def test_finercam_refuses_ranks_that_are_not_ints(model, ranks) -> None:
    with pytest.raises(camkit.CamkitError, match="reference_ranks must be"):
        camkit.FinerCAM(model, reference_ranks=ranks)


@pytest.mark.parametrize("name", [name for name, cls in camkit.METHODS.items()
                                  if issubclass(cls, camkit.AttentionExplainer)])
def test_one_callable_per_image_equals_class_indices_for_attention_methods(name) -> None:
    """The attention methods score per-image callables too (LeGrad hands each its image's per-block logits)."""
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    per_image = [lambda row: row[1], lambda row: row[2]]
    for options in ({}, {"augment": True}):
        explainer = camkit.create(name, vit, **options)
        ours, theirs = explainer.explain(images, per_image), explainer.explain(images, [1, 2])
        torch.testing.assert_close(ours.maps, theirs.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scores, theirs.scores, atol=1e-5, rtol=1e-4, equal_nan=True)
