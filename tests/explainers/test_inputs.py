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
from tests.helpers import no_hooks_left


class TwoInputNet(nn.Module):
    """Image features shifted by an embedding of a per-image vector, pooled, projected on shared prototypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.embed = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor, extra: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv1(x)) + self.embed(extra)[:, :, None, None]
        return F.relu(self.conv2(hidden)).mean(dim=(2, 3)) @ prototypes.T


class Closed(nn.Module):
    """The wrapper a user would write: the extra inputs fixed.

    One image's inputs are expanded to any number of copies; a batch's are
    repeated for whole copies of the batch in copy-major order (Smooth
    Grad-CAM++'s passes, whose noise depends on the whole batch, so it is
    compared batch to batch).
    """

    def __init__(self, model: TwoInputNet, extra: torch.Tensor, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.model, self.extra, self.prototypes = model, extra, prototypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, batch = x.shape[0], self.extra.shape[0]
        extra = self.extra.expand(rows, -1) if batch == 1 else self.extra.repeat(rows // batch, 1)
        assert extra.shape[0] == rows, "a pass that does not hold whole copies of the batch"
        return self.model(x, extra, self.prototypes)


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
