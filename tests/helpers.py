"""References shared by the tests, written independently of camkit's own code paths."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# Methods that need more of the model than a layer and a score: CAM a linear classifier over the
# layer's channels (GAP + nn.Linear), and both it and Finer-CAM a class of the logits, not a callable.
NEEDS_LINEAR_HEAD = ("cam",)
NEEDS_CLASS_LOGITS = ("cam", "finercam")


def reference_capture(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients (float64) from plain hooks, independent of camkit's capture.

    ``classes``: one class per image of a model returning logits, or a function of the
    model's output giving one score per image. A layer returning a tuple is read at its first item.
    """
    store = {}

    def hook(_module, _inputs, out) -> None:
        tensor = out[0] if isinstance(out, tuple) else out
        store["a"] = tensor
        tensor.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    try:
        output = model(x)
        scores = classes(output) if callable(classes) else output.gather(1, torch.as_tensor(classes)[:, None])
        scores.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return store["a"].detach().double(), store["g"].double()


def reference_finish(layer_maps: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    """DESIGN.md's output rule in float64: ReLU, upsample (half-pixel centres), min-max per image."""
    mode = "bilinear" if len(size) == 2 else "trilinear"
    maps = F.interpolate(layer_maps.double().clamp_min(0)[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * len(size)
    return ((maps - low.reshape(shape)) / (high - low).reshape(shape)).numpy()


def reference_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per map, float64 (no upsampling)."""
    flat = maps.double().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps.double() - low.reshape(shape)) / (high - low).reshape(shape)


# Options that keep a loop over every method quick: few noisy samples, few scored channels
# (the perturbation methods run one forward per scored channel and sample).
QUICK_OPTIONS: dict[str, dict[str, int]] = {
    "smoothgradcam++": {"n_samples": 2},
    "scorecam": {"top_channels": 8},
    "sscam": {"top_channels": 8, "n_samples": 2},
    "iscam": {"top_channels": 8, "n_samples": 2},
    "ablationcam": {"top_channels": 8},
}


def quick_options(cls: type) -> dict[str, int]:
    """A method's options for a loop over ``camkit.METHODS`` that must stay fast."""
    return dict(QUICK_OPTIONS.get(getattr(cls, "name", ""), {}))


@contextlib.contextmanager
def quick_defaults() -> Iterator[None]:
    """``QUICK_OPTIONS`` as the methods' defaults for the block: for code that builds explainers itself (the CLI)."""
    import functools

    import camkit

    originals = {}
    for name, options in QUICK_OPTIONS.items():
        cls = camkit.METHODS[name]
        originals[cls] = cls.__dict__.get("__init__")
        cls.__init__ = functools.partialmethod(cls.__init__, **options)
    try:
        yield
    finally:
        for cls, init in originals.items():
            if init is None:
                del cls.__init__
            else:
                cls.__init__ = init


def tiny_strided_cnn(channels: int = 12, classes: int = 5) -> torch.nn.Module:
    """A two-conv CNN with a global-pooling head: few channels, so per-channel loops stay fast.

    Layer ``"3"`` (a ReLU) is the one to explain: non-negative, at half the input's resolution.
    """
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, classes),
    ).eval()


def forward_batch_sizes(model: torch.nn.Module) -> tuple[list[int], Callable[[], None]]:
    """The batch size of every forward of ``model`` from now on, and a function that stops recording."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    return seen, handle.remove


def correlation(first: torch.Tensor, second) -> float:
    """Pearson correlation of two batches of maps, flattened together."""
    a = torch.as_tensor(first).double().flatten()
    b = torch.as_tensor(second).double().flatten()
    return float(torch.corrcoef(torch.stack((a, b)))[0, 1])


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        for module in model.modules()
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block: with small models thread hand-offs cost more than the maths,
    and on a machine whose cores are shared far more (the model zoo tests ran 4x slower on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def user_code_on_path() -> Iterator[None]:
    """``tests/`` importable, for ``--model factory_model:...`` (a user's own module)."""
    sys.path.insert(0, str(TESTS))
    try:
        yield
    finally:
        sys.path.remove(str(TESTS))


def peer_maps(peer_cls, model: torch.nn.Module, layers, x: torch.Tensor, classes, **call_options) -> np.ndarray:
    """A pytorch-grad-cam method's maps for explicit per-image classes, its hooks released afterwards."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = peer_cls(model=model, target_layers=list(layers))
    try:
        return peer(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes], **call_options)
    finally:
        peer.activations_and_grads.release()


def torchcam_maps(cls_name: str, model: torch.nn.Module, layers, x: torch.Tensor, classes, fuse: bool = False,
                  **options) -> np.ndarray:
    """A torchcam method's maps upsampled to the input as camkit does (bilinear, half-pixel), min-max per image."""
    import torchcam.methods

    with getattr(torchcam.methods, cls_name)(model, target_layer=list(layers), **options) as extractor:
        scores = model(x)
        # torchcam normalises without a ReLU; raw maps get camkit's ReLU, upsampling and min-max below.
        cams = extractor(list(map(int, classes)), scores, normalized=fuse)
        cam = extractor.fuse_cams(cams, tuple(x.shape[2:])) if fuse else cams[0]
    model.zero_grad(set_to_none=True)
    return reference_finish(cam.detach(), tuple(x.shape[2:]))


def signed_projections(matrices: torch.Tensor, project) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, ``project(positions x channels, float64 numpy) -> (positions,)``, with camkit's sign rule.

    Returns the signed projections ``(B, *grid)`` and the raw (unsigned) ones, so a peer
    that leaves the sign arbitrary can be matched against either.
    """
    signed, raw = [], []
    for image in matrices.double().numpy():
        positions = image.reshape(image.shape[0], -1).T
        projection = project(positions)
        channel_mean = positions.mean(axis=1)
        agreement = float(((channel_mean - channel_mean.mean()) * projection).sum())
        raw.append(projection.reshape(image.shape[1:]))
        signed.append((projection if agreement >= 0 else -projection).reshape(image.shape[1:]))
    return torch.from_numpy(np.stack(signed)), torch.from_numpy(np.stack(raw))


def first_principal_component(positions: np.ndarray) -> np.ndarray:
    """Centred positions projected on their first right singular vector (numpy's SVD)."""
    centred = positions - positions.mean(axis=0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][0]


def matches_up_to_sign(theirs: np.ndarray, signed: torch.Tensor, size: tuple[int, ...], atol: float = 1e-4) -> np.ndarray:
    """Per image: 1 if the peer's map is the signed reference's, -1 if it is the inverted projection's, 0 if neither."""
    plus, minus = reference_finish(signed, size), reference_finish(-signed, size)
    verdicts = []
    for b in range(len(theirs)):
        if np.allclose(theirs[b], plus[b], atol=atol):
            verdicts.append(1)
        elif np.allclose(theirs[b], minus[b], atol=atol):
            verdicts.append(-1)
        else:
            verdicts.append(0)
    return np.array(verdicts)


def tiny_cnn(classes: int = 5) -> torch.nn.Module:
    """Two 8-channel conv stages, GAP and one linear head: every method, CAM included, applies to both stages."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, classes),
    )


def tiny_detector() -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]], torch.Tensor]:
    """A random-init Faster R-CNN at 128x160 (every proposal kept), two images and its own detections of them."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=128, max_size=160, box_score_thresh=0.0).eval()
    x = torch.rand(2, 3, 128, 160)
    with torch.no_grad():
        detections = model(list(x))
    return model, detections, x


def tiny_cnn3d(classes: int = 5) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, classes),
    )


def tiny_vit(classes: int = 5) -> torch.nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=classes)


def check_method_contract(name: str, **options) -> None:
    """One method on 4-D and 5-D inputs, ViT tokens, two fused layers, every target type; the model left as found."""
    import camkit

    cls = camkit.METHODS[name]
    model = tiny_cnn()
    model.train()
    model[0].requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(3, 3, 12, 10)
    targets = [None, 2, [0, 1, 4], torch.tensor([4, 3, 2]), lambda out: out[:, 1] - out[:, 0]]
    runs = [(target, layers, False) for target in targets for layers in ("3", ["1", "3"])]
    runs += [([0, 1, 4], ["1", "3"], True), (targets[-1], "3", True)]
    for target, layers, augment in runs:
        explainer = cls(model, layers, augment=augment, **options)
        if callable(target) and name in NEEDS_CLASS_LOGITS:
            with pytest.raises(camkit.CamkitError):
                explainer(x, target)
            continue
        maps = explainer(x, target)
        assert maps.shape == (3, 12, 10) and maps.dtype == torch.float32, (name, target, layers)
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.training for m in model.modules()) and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and no_hooks_left(model)

    volumes = cls(tiny_cnn3d().eval(), "1", **options)(torch.randn(2, 1, 4, 6, 6), [1, 3])
    assert volumes.shape == (2, 4, 6, 6) and torch.isfinite(volumes).all()

    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1.ln_1"

    def by_hand(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)

    automatic = cls(vit, layer, **options)(images, [0, 3])
    torch.testing.assert_close(automatic, cls(vit, layer, reshape=by_hand, **options)(images, [0, 3]))
    assert automatic.shape == (2, 32, 32) and torch.isfinite(automatic).all()


def check_against_float64_and_peer(name: str, peer_cls, layer: str, layer_map, **peer_options) -> torch.Tensor:
    """A method on resnet18 (3 images, one class each) equals ``layer_map(A, g)`` in float64 and the peer, to 1e-4.

    Returns camkit's maps for further checks.
    """
    import camkit
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), [1, 7, 4]
    module = dict(model.named_modules())[layer]
    activations, gradients = reference_capture(model, module, x, classes)
    ours = camkit.METHODS[name](model, layer)(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish(layer_map(activations, gradients), (64, 96)), atol=1e-4)
    if peer_cls is not None:
        np.testing.assert_allclose(ours.numpy(), peer_maps(peer_cls, model, [module], x, classes, **peer_options),
                                   atol=1e-4)
    return ours


class ReportPage:
    """A camkit report.html (as written, or as a browser's --dump-dom left it), parsed with the standard library.

    ``rows``: one dict per table row of the body, with its attributes, whether it is hidden, its input
    text and its cells (text, <img> attributes); ``headers``: the column titles; ``tags``: every
    (tag, attributes) in document order, to look for anything that would reach outside the page.
    """

    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        page = self
        self.rows: list[dict] = []
        self.headers: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.body: dict[str, str] = {}

        class Parser(HTMLParser):
            def __init__(self) -> None:
                super().__init__(convert_charrefs=True)
                self.section, self.cell = "", None

            def handle_starttag(self, tag: str, attrs: list) -> None:
                attributes = {key: value if value is not None else "" for key, value in attrs}
                page.tags.append((tag, attributes))
                if tag == "body":
                    page.body = attributes
                elif tag in ("thead", "tbody"):
                    self.section = tag
                elif tag == "tr" and self.section == "tbody":
                    page.rows.append({"attrs": attributes, "hidden": "hidden" in attributes, "cells": []})
                elif tag in ("th", "td") and self.section:
                    self.cell = {"tag": tag, "attrs": attributes, "text": "", "imgs": []}
                    if self.section == "tbody":
                        page.rows[-1]["cells"].append(self.cell)
                elif tag == "img" and self.cell is not None:
                    self.cell["imgs"].append(attributes)

            def handle_endtag(self, tag: str) -> None:
                if tag in ("th", "td") and self.cell is not None:
                    if self.section == "thead":
                        page.headers.append(self.cell["text"])
                    self.cell = None
                elif tag in ("thead", "tbody"):
                    self.section = ""

            def handle_data(self, data: str) -> None:
                if self.cell is not None:
                    self.cell["text"] += data

        Parser().feed(text)
        for row in self.rows:
            row["input"] = row["cells"][0]["text"]

    @property
    def visible(self) -> list[dict]:
        return [row for row in self.rows if not row["hidden"]]

    @property
    def images(self) -> list[dict[str, str]]:
        return [image for row in self.rows for cell in row["cells"] for image in cell["imgs"]]


def linear_imputation_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation in float64 by a sparse direct solve (scipy), one image ``(C, *S)``, 2-D or 3-D.

    Written from the paper's equations: each removed pixel equals the mean of
    its in-bounds neighbours weighted 2^-k (k = axes of the offset: 1/6 and
    1/12 in 2-D), the known pixels fixed.
    """
    import itertools

    import scipy.sparse
    import scipy.sparse.linalg

    shape = removed.shape
    unknown = np.flatnonzero(removed)
    slot = np.full(removed.size, -1)
    slot[unknown] = np.arange(unknown.size)
    coordinates = np.stack(np.unravel_index(unknown, shape), axis=1)
    flat_image = image.reshape(image.shape[0], -1)
    rows, columns, entries = [], [], []
    right = np.zeros((unknown.size, image.shape[0]))
    degree = np.zeros(unknown.size)
    for offset in itertools.product((-1, 0, 1), repeat=len(shape)):
        axes = sum(1 for step in offset if step)
        if not axes:
            continue
        weight = 2.0**-axes
        neighbour = coordinates + np.array(offset)
        inside = np.all((neighbour >= 0) & (neighbour < np.array(shape)), axis=1)
        flat = np.ravel_multi_index(tuple(neighbour[inside].T), shape)
        degree[inside] += weight
        is_unknown = removed.reshape(-1)[flat]
        equations = np.flatnonzero(inside)
        rows += list(equations[is_unknown])
        columns += list(slot[flat[is_unknown]])
        entries += [-weight] * int(is_unknown.sum())
        right[equations[~is_unknown]] += weight * flat_image[:, flat[~is_unknown]].T
    rows += list(range(unknown.size))
    columns += list(range(unknown.size))
    entries += list(degree)
    matrix = scipy.sparse.csc_matrix((entries, (rows, columns)), shape=(unknown.size, unknown.size))
    solution = scipy.sparse.linalg.spsolve(matrix, right).reshape(unknown.size, -1)
    result = flat_image.astype(np.float64).copy()
    result[:, unknown] = solution.T
    return result.reshape(image.shape)
