"""SESS: equal to pytorch-grad-cam's SESS, patches of all images batched, the model left as found."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_grad_cam import SESS as PeerSESS
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam import HiResCAM as PeerHiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit

from ..helpers import forward_batch_sizes, no_hooks_left, reference_normalise, tiny_strided_cnn


def _peer(model: torch.nn.Module, x: torch.Tensor, classes: list[int], **options) -> np.ndarray:
    peer = PeerSESS(model, [model[2]], **options)
    try:
        return peer(x, [ClassifierOutputTarget(c) for c in classes])
    finally:
        peer.base_cam.activations_and_grads.release()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({}, {}),
        ({"pool": "max"}, {"pool": "max"}),
        ({"pre_filter_ratio": 0.5, "theta": 0.2}, {"pre_filter_ratio": 0.5, "theta": 0.2}),
        ({"smooth": False, "use_softmax_scores": False, "step_size": 8, "num_scales": 3},
         {"smooth": False, "use_softmax_scores": False, "step_size": 8, "num_scales": 3}),
        ({"scales": [20, 26, 41], "window_size": 16, "step_size": 6},
         {"scales": [20, 26, 41], "window_size": 16, "step_size": 6}),
        ({"base": "hirescam", "num_scales": 4}, {"base_method": PeerHiResCAM, "num_scales": 4}),
    ],
)
def test_sess_equals_the_peer(ours: dict, theirs: dict) -> None:
    torch.manual_seed(0)
    model = tiny_strided_cnn(channels=12, classes=5)
    x, classes = torch.randn(2, 3, 24, 30), [1, 3]
    mine = camkit.SESS(model, "2", batch_size=16, **ours)(x, classes)
    peer = _peer(model, x, classes, **{"base_method": PeerGradCAM, **theirs})
    # Both are min-max normalised already; normalising again removes the peer's 1e-7 in its denominator.
    np.testing.assert_allclose(reference_normalise(mine).numpy(), reference_normalise(torch.from_numpy(peer)).numpy(),
                               atol=2e-2)


def test_sess_batches_the_patches_of_all_images_and_leaves_the_model_as_found() -> None:
    model = tiny_strided_cnn(channels=12, classes=5)
    model.train()
    model[0].requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(3, 3, 16, 20)
    explainer = camkit.SESS(model, "2", num_scales=3, batch_size=10)
    patches = explainer.patch_grid((16, 20)).count
    # Windows of 16, stride 16: 16x20 holds 1 x 2, 21x26 2 x 2, 26x32 2 x 2 (the last moved back inside).
    assert patches == 2 + 4 + 4
    rows = patches * 3
    passes = [min(10, rows - start) for start in range(0, rows, 10)]
    seen, stop = forward_batch_sizes(model)
    try:
        maps = explainer(x, [0, 1, 4])
    finally:
        stop()
    # One clean pass, then the patches of all three images scored and explained 10 to a pass.
    assert seen == [3, *passes, *passes] and len(passes) == math.ceil(rows / 10)
    assert maps.shape == (3, 16, 20) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.training for m in model.modules()) and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and no_hooks_left(model)


def test_sess_takes_any_target_and_base_options() -> None:
    model, x = tiny_strided_cnn(channels=12, classes=5), torch.randn(2, 3, 16, 16)
    sess = camkit.SESS(model, "2", num_scales=2)
    top = sess.explain(x)
    torch.testing.assert_close(top.maps, sess(x, top.targets.tolist()))
    assert top.targets.tolist() == model(x).argmax(1).tolist()
    scored = sess(x, lambda probabilities: probabilities[:, 2])
    torch.testing.assert_close(scored, sess(x, 2))  # with softmax scores a callable gets the probabilities
    assert camkit.SESS(model, "2", num_scales=2, augment=True)(x, 1).shape == (2, 16, 16)
    smooth = camkit.SESS(model, "2", num_scales=2, base=camkit.GradCAM, eigen_smooth=True)(x, 1)
    assert torch.isfinite(smooth).all() and not torch.equal(smooth, sess(x, 1))
    assert camkit.create("sess", model, "2", base="eigencam", num_scales=2).uses_gradients is False


def test_sess_refuses_what_it_cannot_do() -> None:
    model = tiny_strided_cnn()
    with pytest.raises(camkit.CamkitError, match="base"):
        camkit.SESS(model, "2", base="nosuchmethod")
    with pytest.raises(camkit.CamkitTypeError, match="base"):
        camkit.SESS(model, "2", base=torch.nn.ReLU)
    with pytest.raises(camkit.CamkitError, match="pool"):
        camkit.SESS(model, "2", pool="median")
    with pytest.raises(camkit.CamkitError, match="pre_filter_ratio"):
        camkit.SESS(model, "2", pre_filter_ratio=1.0)
    with pytest.raises(camkit.CamkitError, match="at least the window size"):
        camkit.SESS(model, "2", scales=[8, 20])(torch.randn(1, 3, 16, 16))
    with pytest.raises(camkit.CamkitError, match="2-D images"):
        camkit.SESS(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)),
                    "0")(torch.randn(1, 1, 4, 6, 6))


def test_gaussian_blur_equals_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    from camkit.explainers.sess import gaussian_blur

    maps = torch.rand(2, 19, 23)
    expected = np.stack([cv2.GaussianBlur(m, (11, 11), 5.0, 0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, 11, 5.0).numpy(), expected, atol=1e-5)
