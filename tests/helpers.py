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
NEEDS_CLASS_LOGITS = ("cam", "finercam", "sess")
# Methods for 2-D images only (SESS cuts square windows from resized images): loops over volumes skip them.
TWO_D_ONLY = ("sess",)


def reads_no_layer(cls: type) -> bool:
    """A pixel method that explains the input and ignores ``target_layer`` (Guided Grad-CAM reads its CAM's layer)."""
    return not getattr(cls, "reads_layer", True)


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


def layer_output(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's output for ``x`` from a plain hook, without gradients."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"]


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
    "sess": {"num_scales": 2},  # 2 scales: 1 + 4 patches per image instead of 113
    "integratedgradients": {"steps": 4},  # 50 steps made it 40 % of the every-method loops' time
}


def applicable_methods(model: torch.nn.Module) -> dict[str, type]:
    """The entries of ``camkit.METHODS`` that can explain ``model`` (the attention methods need a transformer)."""
    import camkit
    from camkit.explainers import methods_for

    return {name: camkit.METHODS[name] for name in methods_for(model)}


def cam_methods() -> dict[str, type]:
    """The entries of ``camkit.METHODS`` that explain a CNN (all but the transformer-attention methods)."""
    import camkit

    return {name: cls for name, cls in camkit.METHODS.items() if not issubclass(cls, camkit.AttentionExplainer)}


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


class NaNScores(torch.nn.Module):
    """``model``'s logits with NaN in ``rows`` of each forward (all rows when None), from forward ``after + 1`` on.

    ``after=1`` leaves the clean pass of a perturbation method alone and spoils only its perturbed forwards.
    """

    def __init__(self, model: torch.nn.Module, rows: list[int] | None = None, after: int = 0) -> None:
        super().__init__()
        self.model, self.rows, self.after, self.calls = model, rows, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.calls += 1
        if self.calls <= self.after:
            return logits
        spoiled = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        spoiled[self.rows if self.rows is not None else slice(None)] = True
        return torch.where(spoiled[:, None], float("nan"), logits)


def check_refuses_nan_scores(name: str, **options) -> None:
    """A gradient-free method refuses NaN clean scores and NaN scores of its perturbed copies, naming the image."""
    import camkit

    torch.manual_seed(0)
    model = tiny_strided_cnn()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(camkit.CamkitError, match=r"NaN or infinite for image\(s\) \[0, 1\]"):
        camkit.create(name, NaNScores(model), "model.3", **options)(x)
    with pytest.raises(camkit.CamkitError, match=r"perturbed copies of image\(s\) \[0, 1\]"):
        camkit.create(name, NaNScores(model, after=1), "model.3", **options)(x)


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


def contract_setup() -> tuple[torch.nn.Module, list[bool], torch.Tensor, list]:
    """A fine-tuning tiny CNN (training mode, first conv frozen), its requires_grad flags, 3 images, every target type."""
    model = tiny_cnn()
    model.train()
    model[0].requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    targets = [None, 2, [0, 1, 4], torch.tensor([4, 3, 2]), lambda out: out[:, 1] - out[:, 0]]
    return model, flags, torch.randn(3, 3, 12, 10), targets


def check_method_contract(name: str, **options) -> None:
    """One method on 4-D and 5-D inputs, ViT tokens, two fused layers, every target type; the model left as found."""
    import camkit

    cls = camkit.METHODS[name]
    model, flags, x, targets = contract_setup()
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
    import torchvision

    import camkit

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


# --- Weakly-supervised localisation as Choe et al.'s code (github clovaai/wsolevaluation) computes it:
# numpy and OpenCV, one map at a time, OpenCV's contours one threshold at a time. Written from their definitions for the tests and
# the benchmark (benchmarks/bench_metrics.py times camkit against this loop).

def wsol_boxes(scoremap: np.ndarray, threshold: float, multi_contour: bool) -> list[tuple[int, int, int, int]]:
    """Boxes of the contours of ``uint8(map * 255) > int(threshold * max)``; x1 = x + w, clipped to W - 1."""
    return _wsol_boxes_of(_wsol_quantised(scoremap), threshold, multi_contour)


def _wsol_quantised(scoremap: np.ndarray) -> np.ndarray:
    return (scoremap.astype(np.float64) * 255).astype(np.uint8)


def _wsol_boxes_of(quantised: np.ndarray, threshold: float, multi_contour: bool) -> list[tuple[int, int, int, int]]:
    import cv2

    height, width = quantised.shape
    _, binary = cv2.threshold(quantised, int(threshold * np.max(quantised)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return [(0, 0, 0, 0)]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
    return boxes


def wsol_iou(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, G) IoU with pixels counted inclusively; 0 where the union is empty."""
    boxes, truth = boxes[:, None].astype(np.int64), truth[None].astype(np.int64)
    width = np.maximum(0, np.minimum(boxes[..., 2], truth[..., 2]) - np.maximum(boxes[..., 0], truth[..., 0]) + 1)
    height = np.maximum(0, np.minimum(boxes[..., 3], truth[..., 3]) - np.maximum(boxes[..., 1], truth[..., 1]) + 1)
    inter = width * height
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area(boxes) + area(truth) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def wsol_max_box_accuracy(scoremaps, truth_boxes, thresholds, iou_thresholds=(30, 50, 70), multi_contour=True):
    """MaxBoxAcc per IoU threshold (percent), structured as the authors' BoxEvaluator.accumulate/compute: per map,
    quantise once, boxes at every threshold, one IoU table for all of them, then each threshold's slice."""
    correct = {limit: np.zeros(len(thresholds)) for limit in iou_thresholds}
    for scoremap, truth in zip(scoremaps, truth_boxes):
        quantised = _wsol_quantised(scoremap)
        per_threshold = [np.asarray(_wsol_boxes_of(quantised, threshold, multi_contour)) for threshold in thresholds]
        overlaps = wsol_iou(np.concatenate(per_threshold), np.asarray(truth)).max(1)
        best, start = [], 0
        for boxes in per_threshold:
            best.append(overlaps[start : start + len(boxes)].max())
            start += len(boxes)
        for limit in iou_thresholds:
            correct[limit][np.where(np.asarray(best) >= limit / 100)[0]] += 1
    return [float((correct[limit] * 100.0 / len(scoremaps)).max()) for limit in iou_thresholds]


def wsol_pxap(scoremaps, masks, thresholds, ignore=None) -> float:
    """PxAP (percent): histograms of scores on object / background pixels, precision-recall area."""
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    positive = np.zeros(len(edges) - 1)
    negative = np.zeros(len(edges) - 1)
    for index, (scoremap, mask) in enumerate(zip(scoremaps, masks)):
        label = mask.astype(np.uint8) + (255 * ignore[index].astype(np.uint8) if ignore is not None else 0)
        positive += np.histogram(scoremap[label == 1], bins=edges)[0]
        negative += np.histogram(scoremap[label == 0], bins=edges)[0]
    tp, fp = positive[::-1].cumsum(), negative[::-1].cumsum()
    fn = positive.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    nonzero = (tp + fp) != 0
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


def blob_maps(count: int, side: int, seed: int, coarse: int = 7) -> torch.Tensor:
    """Smooth CAM-like maps in [0, 1] (a coarse random field upsampled), several blobs and holes per map."""
    generator = torch.Generator().manual_seed(seed)
    field = torch.rand(count, 1, coarse, coarse, generator=generator, dtype=torch.float64)
    maps = F.interpolate(field, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low)).float()


def random_boxes(count: int, side: int, seed: int) -> list[torch.Tensor]:
    """One to three (x0, y0, x1, y1) boxes per image inside a side x side image, seeded."""
    generator = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(count):
        corners = torch.randint(0, side, (int(torch.randint(1, 4, (1,), generator=generator)), 2, 2),
                                generator=generator)
        boxes.append(torch.cat((corners.amin(1), corners.amax(1)), dim=1))
    return boxes


# Detectors: random-init, built offline, small enough for a test at 64 x 64.
def calibrated(model: torch.nn.Module, size: int = 64) -> torch.nn.Module:
    """BatchNorm statistics taken from one random batch: random-init YOLO's activations otherwise vanish."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, size, size))
    return model.eval()


def tiny_yolo() -> torch.nn.Module:
    """ultralytics' YOLOv8n from its yaml (no download), normalised activations and class priors at 0.5."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = calibrated(tasks.DetectionModel("yolov8n.yaml", verbose=False))
    for branch in model.model[-1].cv3:  # confidences spread around 0.5 (the prior bias makes them ~1e-4)
        torch.nn.init.normal_(branch[-1].weight, std=0.002)
        torch.nn.init.zeros_(branch[-1].bias)
    return model


def tiny_yolo_seg() -> torch.nn.Module:
    """ultralytics' YOLOv8n-seg from its yaml (no download), calibrated like :func:`tiny_yolo`."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = calibrated(tasks.SegmentationModel("yolov8n-seg.yaml", verbose=False))
    for branch in model.model[-1].cv3:
        torch.nn.init.normal_(branch[-1].weight, std=0.002)
        torch.nn.init.zeros_(branch[-1].bias)
    return model


def tiny_maskrcnn(classes: int = 4) -> torch.nn.Module:
    """torchvision's Mask R-CNN (random init) on :func:`tiny_fasterrcnn`'s 3-conv backbone, images kept at 64 px."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU())
    backbone.out_channels = 16
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    return MaskRCNN(backbone, num_classes=classes, rpn_anchor_generator=anchors, min_size=64, max_size=64,
                    box_score_thresh=0.0, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=12).eval()


def tiny_detr(classes: int = 5, queries: int = 10) -> torch.nn.Module:
    """A Hugging Face DETR with a 4-stage ResNet of 8-32 channels and one encoder and decoder layer."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                         out_features=["stage4"])
    config = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=queries, num_labels=classes)
    model = transformers.DetrForObjectDetection(config).eval()
    # Queries that differ, and probabilities that spread over the classes.
    torch.nn.init.normal_(model.model.query_position_embeddings.weight, std=3.0)
    torch.nn.init.normal_(model.class_labels_classifier.weight, std=1.0)
    return model


def tiny_fasterrcnn(classes: int = 5) -> torch.nn.Module:
    """torchvision's Faster R-CNN on a 3-conv backbone (stride 8), images kept at 64 px, every box kept."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU())
    backbone.out_channels = 16
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(backbone, num_classes=classes, rpn_anchor_generator=anchors, min_size=64, max_size=64,
                      box_score_thresh=0.0, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=12).eval()


# Vision Transformers of the three libraries camkit reads attention from: tiny, random-init, 32 x 32 inputs,
# 8 x 8 patches (a 4 x 4 grid after one class token), three blocks, logits that depend on the image.
VIT_FAMILIES = ("torchvision", "timm", "huggingface")


def tiny_transformer(family: str, classes: int = 5, **options) -> torch.nn.Module:
    """A tiny ViT of ``family`` in eval mode; ``options`` go to timm's ``create_model``."""
    if family == "torchvision":
        import torchvision

        model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                     hidden_dim=16, mlp_dim=32, num_classes=classes)
        torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    elif family == "timm":
        import timm

        settings = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 24, "num_heads": 3, "num_classes": classes}
        model = timm.create_model(options.pop("name", "vit_tiny_patch16_224"), pretrained=False, **{**settings, **options})
    else:
        import transformers

        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=3,
                                        num_attention_heads=2, intermediate_size=32, num_labels=classes)
        model = transformers.ViTForImageClassification(config)
    return model.eval()


class _ExplicitMultiheadAttention(torch.nn.Module):
    """torchvision's self-attention written out, for references: probabilities kept with their gradients."""

    def __init__(self, attention: torch.nn.MultiheadAttention, kept: list) -> None:
        super().__init__()
        self.attention, self.kept = attention, kept

    def forward(self, query, _key, _value, need_weights=False):
        batch, tokens, width = query.shape
        heads = self.attention.num_heads
        q, k, v = F.linear(query, self.attention.in_proj_weight, self.attention.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        probabilities = (q @ k.transpose(-2, -1) / (width // heads) ** 0.5).softmax(dim=-1)
        probabilities.retain_grad()
        self.kept.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, tokens, width)
        return self.attention.out_proj(mixed), None


def explicit_attention_forward(model: torch.nn.Module, family: str, x: torch.Tensor,
                               block_outputs: list | None = None) -> tuple[object, list[torch.Tensor]]:
    """A float64 copy of ``model`` run on ``x`` with its attention computed in the open (the libraries' own
    non-fused paths, or torchvision's written out): the output and each block's probabilities ``(B, heads, N, N)``,
    which keep their gradients. ``block_outputs`` collects each block's output tokens."""
    import copy

    twin = copy.deepcopy(model).double().requires_grad_(True)
    kept: list[torch.Tensor] = []
    blocks = {"torchvision": lambda: list(twin.encoder.layers), "timm": lambda: list(twin.blocks),
              "huggingface": lambda: list(twin.vit.layers)}[family]()
    for block in blocks:
        if family == "torchvision":
            block.self_attention = _ExplicitMultiheadAttention(block.self_attention, kept)
        elif family == "timm":
            block.attn.fused_attn = False

            def keep(_module, _inputs, out) -> None:
                out.retain_grad()
                kept.append(out)

            block.attn.attn_drop.register_forward_hook(keep)
        if block_outputs is not None:
            block.register_forward_hook(lambda _m, _i, out: block_outputs.append(out[0] if isinstance(out, tuple) else out))
    if family == "huggingface":
        twin.config._attn_implementation = "eager"
        output = twin(x.double(), output_attentions=True)
        for probabilities in output.attentions:
            probabilities.retain_grad()
            kept.append(probabilities)
        return output, kept
    return twin(x.double()), kept


def class_scores(output, classes) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    return logits.gather(1, torch.as_tensor(classes)[:, None]).squeeze(1)


def rollout_reference(probabilities: list[torch.Tensor], prefix: int, fusion: str = "mean",
                      discard_ratio: float = 0.0, normalise: str = "rows") -> torch.Tensor:
    """Attention rollout in float64 from the blocks' probabilities ``(B, heads, N, N)``: the first token's row
    of R = Ã_L ... Ã_1 over the patch tokens ``(B, N - prefix)``. ``normalise="columns"`` divides column j by
    the sum of row j instead, as the popular vit-explain script's ``a / a.sum(dim=-1)`` does."""
    tokens = probabilities[0].shape[-1]
    eye = torch.eye(tokens, dtype=torch.float64)
    rollout = eye.expand(probabilities[0].shape[0], tokens, tokens)
    for block in probabilities:
        fused = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[fusion](block.double())
        fused = fused.clone()
        for image in range(fused.shape[0]):
            flat = fused[image].reshape(-1)
            lowest = flat.argsort()[: int(flat.numel() * discard_ratio)]
            flat[lowest[lowest != 0]] = 0
        mixed = (fused + eye) / 2
        sums = mixed.sum(dim=-1)
        mixed = mixed / (sums[:, :, None] if normalise == "rows" else sums[:, None, :])
        rollout = mixed @ rollout
    return rollout[:, 0, prefix:]


def chefer_reference(probabilities: list[torch.Tensor], gradients: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Chefer et al.'s generic rule in float64, as their code: R = I; R += mean_h((dS/dA * A)^+) @ R per block;
    the first token's row over the patch tokens."""
    tokens = probabilities[0].shape[-1]
    relevance = torch.eye(tokens, dtype=torch.float64).repeat(probabilities[0].shape[0], 1, 1)
    for block, gradient in zip(probabilities, gradients):
        averaged = (gradient.double() * block.double()).clamp(min=0).mean(dim=1)
        relevance = relevance + averaged @ relevance
    return relevance[:, 0, prefix:]


class FunctionalReluCNN(torch.nn.Module):
    """``relu_twin_cnns()``'s second model: the same layers, every ReLU a different functional form."""

    def __init__(self, modules: torch.nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.head = modules.conv1, modules.conv2, modules.conv3, modules.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)).relu()  # a second ReLU on a non-negative tensor: its backward still guides
        x = self.conv3(x)
        x.relu_()
        x = F.relu(x + 0.1, inplace=True) - 0.1
        return self.head(torch.relu_(x.mean(dim=(2, 3))))


def relu_twin_cnns(classes: int = 4) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two models with shared weights: one with ``nn.ReLU`` modules (in place or not), one with functional ReLUs.

    They compute the same function, so guided backprop must give the same attributions on both.
    """
    torch.manual_seed(0)
    layers = torch.nn.Module()
    layers.conv1, layers.conv2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 6, 3, padding=1)
    layers.conv3, layers.head = torch.nn.Conv2d(6, 6, 3, stride=2), torch.nn.Linear(6, classes)

    class ModuleReluCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.conv3, self.head = layers.conv1, layers.conv2, layers.conv3, layers.head
            self.relu1, self.relu2a, self.relu2b = torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.ReLU()
            self.relu3a, self.relu3b, self.relu4 = torch.nn.ReLU(inplace=True), torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu2b(self.relu2a(self.conv2(self.relu1(self.conv1(x)))))
            x = self.relu3b(self.relu3a(self.conv3(x)) + 0.1) - 0.1
            return self.head(self.relu4(x.mean(dim=(2, 3))))

    return ModuleReluCNN().eval(), FunctionalReluCNN(layers).eval()


def check_pixel_contract(name: str, **options) -> None:
    """A pixel method: attributions shaped like x, maps in [0, 1], every target type, no_grad / inference_mode
    callers, frozen parameters, volumes; the model left as found."""
    import camkit

    cls = camkit.METHODS[name]
    model, flags, x, targets = contract_setup()
    targets.append(camkit.MultiLabelTarget([1, 2, 0]))
    for target in targets:
        for context in (contextlib.nullcontext, torch.no_grad, torch.inference_mode):
            with context():
                result = cls(model, **options).explain(x, target)
            assert result.attributions.shape[0] == 3 and result.attributions.shape[2:] == (12, 10), (name, target)
            assert result.maps.shape == (3, 12, 10) and result.maps.dtype == torch.float32
            assert torch.isfinite(result.attributions).all() and result.maps.min() >= 0 and result.maps.max() <= 1
            assert not result.attributions.requires_grad and not result.attributions.is_inference()
    assert all(m.training for m in model.modules()) and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and no_hooks_left(model) and torch.is_grad_enabled()
    segmenter = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
    mask = torch.zeros(12, 10)
    mask[2:8, 3:7] = 1
    segmented = cls(segmenter, **options).explain(x, camkit.SegmentationTarget(1, mask))
    assert segmented.maps.shape == (3, 12, 10) and torch.isfinite(segmented.attributions).all()
    volumes = cls(tiny_cnn3d().eval(), **options).explain(torch.randn(2, 1, 4, 6, 6), [1, 3])
    assert volumes.maps.shape == (2, 4, 6, 6) and volumes.attributions.shape[2:] == (4, 6, 6)


# inputs=: a model taking (x, extra, prototypes), and the wrapper that closes over the extra inputs.
class TwoInputNet(torch.nn.Module):
    """Image features shifted by an embedding of a per-image vector, pooled, projected on shared prototypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.embed = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor, extra: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv1(x)) + self.embed(extra)[:, :, None, None]
        return F.relu(self.conv2(hidden)).mean(dim=(2, 3)) @ prototypes.T


class Closed(torch.nn.Module):
    """The wrapper a user would write for ``inputs=``: the extra inputs fixed (any two-input model).

    One image's inputs are expanded to any number of copies; a batch's are
    repeated for whole copies of the batch in copy-major order (Smooth
    Grad-CAM++'s passes, whose noise depends on the whole batch, so it is
    compared batch to batch).
    """

    def __init__(self, model: torch.nn.Module, extra: torch.Tensor, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.model, self.extra, self.prototypes = model, extra, prototypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, batch = x.shape[0], self.extra.shape[0]
        extra = self.extra.expand(rows, -1) if batch == 1 else self.extra.repeat(rows // batch, 1)
        assert extra.shape[0] == rows, "a pass that does not hold whole copies of the batch"
        return self.model(x, extra, self.prototypes)


class TwoInputViT(torch.nn.Module):
    """A tiny torchvision ViT (32 x 32, patches of 8) on the image shifted by an embedding of a per-image vector,
    its 8 outputs projected on shared prototypes: TwoInputNet's calling convention for the attention methods."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = tiny_vit(classes=8)
        self.shift = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, extra: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return self.vit(x + self.shift(extra)[:, :, None, None]) @ prototypes.T
