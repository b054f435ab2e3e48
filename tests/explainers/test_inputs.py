"""inputs=: every place that copies or splits the batch carries the model's other inputs with the images.

Each method with ``inputs=`` must equal the same method on a wrapper module
that closes over the extra inputs; where a method makes copies of the batch
the wrapper holds one image's inputs (it cannot know which copy is which), so
the comparison runs image by image.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from tests.helpers import (
    NEEDS_LINEAR_HEAD,
    Closed,
    TwoInputNet,
    TwoInputViT,
    no_hooks_left,
    quick_options,
    tiny_fasterrcnn,
)


def _setup(batch: int = 2):
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    return model, torch.randn(batch, 3, 16, 16), torch.randn(batch, 4), torch.randn(5, 8)


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_gradcam_with_inputs_equals_the_wrapper(form: str) -> None:
    model, x, extra, prototypes = _setup()
    inputs = {"extra": extra, "prototypes": prototypes} if form == "dict" else (extra, prototypes)
    ours = camkit.GradCAM(model, model.conv2).explain(x, [1, 3], inputs=inputs)
    theirs = camkit.GradCAM(Closed(model, extra, prototypes), model.conv2).explain(x, [1, 3])
    torch.testing.assert_close(ours.maps, theirs.maps)
    torch.testing.assert_close(ours.scores, theirs.scores)
    assert no_hooks_left(model)


@pytest.mark.parametrize(("method", "options"), [
    ("gradcam", {"augment": True}),
    ("scorecam", {}),
    ("ablationcam", {}),
    ("sscam", {"n_samples": 2}),
])
@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_copying_methods_with_inputs_equal_the_wrapper_image_by_image(method: str, options: dict, form: str) -> None:
    model, x, extra, prototypes = _setup(batch=3)
    inputs = {"extra": extra, "prototypes": prototypes} if form == "dict" else (extra, prototypes)
    ours = camkit.create(method, model, model.conv2, **options).explain(x, None, inputs=inputs)
    for image in range(3):
        wrapper = Closed(model, extra[image:image + 1], prototypes)
        theirs = camkit.create(method, wrapper, model.conv2, **options).explain(x[image:image + 1])
        torch.testing.assert_close(ours.maps[image:image + 1], theirs.maps, atol=1e-5, rtol=1e-4)
        assert ours.targets[image] == theirs.targets[0]
    assert no_hooks_left(model)


@pytest.mark.parametrize("batch_size", [None, 2])  # 2: passes that split the copies
def test_smooth_gradcampp_with_inputs_equals_the_wrapper(batch_size: int | None) -> None:
    model, x, extra, prototypes = _setup(batch=2)
    options = {"n_samples": 3, "batch_size": batch_size}
    ours = camkit.SmoothGradCAMPlusPlus(model, model.conv2, **options)(x, None, inputs=(extra, prototypes))
    theirs = camkit.SmoothGradCAMPlusPlus(Closed(model, extra, prototypes), model.conv2, **options)(x, None)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_batch_sized_input_marked_shared_is_not_copied_with_the_images() -> None:
    model, x, extra, _ = _setup(batch=2)
    prototypes = torch.randn(2, 8)  # as many prototypes as images: only Shared says they are not per image
    ours = camkit.GradCAM(model, model.conv2, augment=True)(x, 0, inputs=(extra, camkit.Shared(prototypes)))
    for image in range(2):
        theirs = camkit.GradCAM(Closed(model, extra[image:image + 1], prototypes), model.conv2, augment=True)(
            x[image:image + 1], 0)
        torch.testing.assert_close(ours[image:image + 1], theirs, atol=1e-4, rtol=1e-4)  # percent scale


@pytest.mark.parametrize("metric", ["deletion", "insertion", "average_drop", "road_combined"])
def test_metrics_with_inputs_equal_the_wrapper_image_by_image(metric: str) -> None:
    model, x, extra, prototypes = _setup(batch=2)
    maps = torch.rand(2, 16, 16)
    function = getattr(camkit.metrics, metric)
    options = {"steps": 4, "chunk_size": 3} if metric in ("deletion", "insertion") else {}
    ours = function(model, x, maps, inputs={"extra": extra, "prototypes": prototypes}, **options)
    for image in range(2):
        theirs = function(Closed(model, extra[image:image + 1], prototypes), x[image:image + 1],
                          maps[image:image + 1], **options)
        torch.testing.assert_close(ours[image:image + 1], theirs, atol=1e-4, rtol=1e-4)  # percent scale


# Every method for a CNN whose maps repeat from call to call (RandomCAM draws new weights; CAM needs a linear head).
CNN_METHODS = [name for name, cls in camkit.METHODS.items()
               if name not in ("randomcam", *NEEDS_LINEAR_HEAD) and not issubclass(cls, camkit.AttentionExplainer)]
# Compared batch to batch: Smooth Grad-CAM++ draws its noise for the whole batch at once, DFF factorises the
# batch's activations together.
BATCH_DEPENDENT = ("smoothgradcam++", "deepfeaturefactorization")


def _forms(extra: torch.Tensor, prototypes: torch.Tensor, form: str):
    return {"extra": extra, "prototypes": prototypes} if form == "dict" else (extra, prototypes)


@pytest.mark.parametrize("form", ["dict", "tuple"])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_cnn_method_with_inputs_equals_the_wrapper_image_by_image(method: str, form: str) -> None:
    """Every registered CNN method, pixel methods included (their attribution is with respect to x only)."""
    model, x, extra, prototypes = _setup(batch=2)
    options = quick_options(camkit.METHODS[method])
    if method == "integratedgradients":
        options["steps"] = 4
    ours = camkit.create(method, model, model.conv2, **options).explain(x, [1, 3], inputs=_forms(extra, prototypes, form))
    images = [slice(0, 2)] if method in BATCH_DEPENDENT else [slice(image, image + 1) for image in range(2)]
    for image in images:
        wrapper = Closed(model, extra[image], prototypes)
        theirs = camkit.create(method, wrapper, model.conv2, **options).explain(x[image], [1, 3][image])
        torch.testing.assert_close(ours.maps[image], theirs.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scores[image], theirs.scores, equal_nan=True, atol=1e-5, rtol=1e-4)
        if ours.attributions is not None:  # pixel methods: d score / d x, the other inputs held fixed
            torch.testing.assert_close(ours.attributions[image], theirs.attributions, atol=1e-5, rtol=1e-4)
    assert no_hooks_left(model)


def test_pixel_attributions_are_with_respect_to_the_images_only() -> None:
    """Saliency with inputs= is the autograd gradient of the score by x, the other inputs constants."""
    model, x, extra, prototypes = _setup(batch=2)
    leaf = x.clone().requires_grad_(True)
    extra_leaf = extra.clone().requires_grad_(True)
    model(leaf, extra_leaf, prototypes)[torch.arange(2), torch.tensor([1, 3])].sum().backward()
    ours = camkit.Saliency(model, abs=False).explain(x, [1, 3], inputs=(extra, prototypes))
    torch.testing.assert_close(ours.attributions, leaf.grad)
    assert ours.attributions.shape == x.shape and extra.grad is None


@pytest.mark.parametrize(("method", "options"), [
    ("attentionrollout", {}),
    ("transformerattribution", {}),
    ("legrad", {}),
    ("transformerattribution", {"augment": True}),  # copies of the batch
    ("gradcam", {"batch_size": 1, "augment": True}),  # a CAM method on the ViT, passes of one copy
])
@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_attention_methods_with_inputs_equal_the_wrapper_image_by_image(method: str, options: dict, form: str) -> None:
    from camkit.explainers.legrad import default_score_projection

    torch.manual_seed(0)
    model = TwoInputViT().eval()
    x, extra, prototypes = torch.randn(2, 3, 32, 32), torch.randn(2, 4), torch.randn(5, 8)
    if method == "legrad":  # the ViT's own norm and head score each block's tokens, in both calls
        options = {"score_projection": default_score_projection(model.vit)}
    ours = camkit.create(method, model, **options).explain(x, [1, 3], inputs=_forms(extra, prototypes, form))
    for image in range(2):
        theirs = camkit.create(method, Closed(model, extra[image:image + 1], prototypes), **options).explain(
            x[image:image + 1], [1, 3][image])
        torch.testing.assert_close(ours.maps[image:image + 1], theirs.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scores[image:image + 1], theirs.scores, equal_nan=True, atol=1e-5, rtol=1e-4)
    assert no_hooks_left(model)


def _shifted_detector() -> tuple[nn.Module, nn.Module]:
    """A torchvision Faster R-CNN that takes a second input, a per-image colour shift, and its plain twin."""
    import copy

    plain = tiny_fasterrcnn()

    class ShiftedFasterRCNN(type(plain)):
        def forward(self, images, shift):
            return super().forward(images + shift[:, :, None, None])

    ShiftedFasterRCNN.__module__ = type(plain).__module__  # a torchvision detector, as camkit recognises them
    shifted = copy.deepcopy(plain)
    shifted.__class__ = ShiftedFasterRCNN
    return shifted, plain


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(("method", "options"), [("gradcam", {}),  # one forward serves every detection
                                                 ("ablationcam", {"top_channels": 8})])  # one call per detection (ablates after the shift)
def test_explain_detections_with_inputs_equals_the_detector_fed_the_shifted_images(method: str, options: dict) -> None:
    shifted, plain = _shifted_detector()
    x, shift = torch.rand(2, 3, 64, 64), torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.2, 0.0]])
    ours = camkit.create(method, shifted, **options).explain_detections(
        x, score_threshold=0.0, max_detections=2, inputs=(shift,))
    theirs = camkit.create(method, plain, **options).explain_detections(
        x + shift[:, :, None, None], score_threshold=0.0, max_detections=2)
    assert [len(maps) for maps in ours.maps] == [2, 2]
    for image in range(2):
        torch.testing.assert_close(ours.boxes[image], theirs.boxes[image])
        torch.testing.assert_close(ours.maps[image], theirs.maps[image], atol=1e-5, rtol=1e-4)
    assert no_hooks_left(shifted)


SEEDED = ("max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate", "gradient_noise_stability")


@pytest.mark.parametrize("metric", [*SEEDED, "coherency", "adcc", "arcc"])
def test_robustness_metrics_with_inputs_equal_the_wrapper_image_by_image(metric: str) -> None:
    """The metrics that call an explainer: every call (perturbed copies in passes included) gets the inputs."""
    model, x, extra, prototypes = _setup(batch=2)
    function = getattr(camkit.metrics, metric)
    seeds = torch.tensor([7, 9])  # one seed per image: an image's noise does not depend on its batch

    def options(image: slice) -> dict:
        if metric == "arcc":  # ROAD's noise depends on an image's place in the batch: none here
            return {"noise": 0.0}
        return {"samples": 2, "seed": seeds[image]} if metric in SEEDED else {}

    ours = function(camkit.GradCAM(model, model.conv2), x, None, inputs=(extra, prototypes), **options(slice(0, 2)))
    for image in (slice(0, 1), slice(1, 2)):
        explainer = camkit.GradCAM(Closed(model, extra[image], prototypes), model.conv2)
        theirs = function(explainer, x[image], None, **options(image))
        if isinstance(ours, dict):
            for key, values in ours.items():
                torch.testing.assert_close(values[image], theirs[key], atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(ours[image], theirs, atol=1e-5, rtol=1e-4, equal_nan=True)


# One callable per image (pytorch-grad-cam's convention), not the class, so a copy scored by another image's
# callable would show.
PER_IMAGE = [lambda row: row[1] - row[0], lambda row: 2 * row[3] - row[4]]


@pytest.mark.parametrize(("method", "options"), [
    ("gradcam", {"augment": True}),
    ("scorecam", {"top_channels": 8}),
    ("sscam", {"top_channels": 8, "n_samples": 2}),
    ("iscam", {"top_channels": 8, "n_samples": 2}),
    ("ablationcam", {"top_channels": 8}),
    ("integratedgradients", {"steps": 4, "batch_size": 3}),  # passes that split the path's copies
    ("guidedgradcam", {"cam": "scorecam", "top_channels": 8}),
])
def test_per_image_callables_follow_the_copies_with_inputs(method: str, options: dict) -> None:
    model, x, extra, prototypes = _setup(batch=2)
    ours = camkit.create(method, model, model.conv2, **options).explain(x, PER_IMAGE, inputs=(extra, prototypes))
    for image in range(2):
        wrapper = Closed(model, extra[image:image + 1], prototypes)
        theirs = camkit.create(method, wrapper, model.conv2, **options).explain(
            x[image:image + 1], [PER_IMAGE[image]])
        torch.testing.assert_close(ours.maps[image:image + 1], theirs.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scores[image:image + 1], theirs.scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_smooth_gradcampp_per_image_callables_follow_the_noisy_copies(batch_size: int | None) -> None:
    model, x, extra, prototypes = _setup(batch=2)
    options = {"n_samples": 3, "batch_size": batch_size}
    ours = camkit.SmoothGradCAMPlusPlus(model, model.conv2, **options)(x, PER_IMAGE, inputs=(extra, prototypes))
    theirs = camkit.SmoothGradCAMPlusPlus(Closed(model, extra, prototypes), model.conv2, **options)(x, PER_IMAGE)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # Each noisy copy scored by its own image's callable: callables that pick the classes give the classes' maps.
    picking = [lambda row: row[1], lambda row: row[3]]
    cam = camkit.SmoothGradCAMPlusPlus(model, model.conv2, **options)
    torch.testing.assert_close(cam(x, picking, inputs=(extra, prototypes)), cam(x, [1, 3], inputs=(extra, prototypes)),
                               atol=1e-5, rtol=1e-4)
