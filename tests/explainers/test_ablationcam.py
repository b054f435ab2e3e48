"""Ablation-CAM against pytorch-grad-cam; the downstream-only path against full forwards; its fallback."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import AblationCAM as PeerAblationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit

from ..helpers import check_refuses_nan_scores, forward_batch_sizes, no_hooks_left, tiny_strided_cnn, tiny_vit


def _peer(model, layer, x, classes) -> np.ndarray:
    peer = PeerAblationCAM(model=model, target_layers=[layer])
    try:
        return peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        peer.activations_and_grads.release()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_equals_pytorch_grad_cam(resnet) -> None:
    x = torch.randn(1, 3, 64, 48)  # pytorch-grad-cam runs the layers before layer4 once per channel
    classes = [3]
    cam = camkit.AblationCAM(resnet, "layer4")
    ours = cam(x, classes)
    assert cam.path_used == "downstream"
    np.testing.assert_allclose(ours.numpy(), _peer(resnet, resnet.layer4, x, classes), atol=1e-4)
    assert no_hooks_left(resnet)


def test_equals_pytorch_grad_cam_on_a_small_cnn() -> None:
    torch.manual_seed(1)
    model = tiny_strided_cnn()
    x = torch.randn(3, 3, 24, 32)
    np.testing.assert_allclose(camkit.AblationCAM(model, "3")(x, [0, 1, 2]).numpy(),
                               _peer(model, model[3], x, [0, 1, 2]), atol=1e-4)


def test_downstream_path_equals_full_forwards_and_runs_upstream_once_per_chunk(resnet) -> None:
    x = torch.randn(2, 3, 64, 64)
    full = camkit.AblationCAM(resnet, "layer4", top_channels=64, path="full")
    expected = full.explain(x)
    seen, stop = forward_batch_sizes(resnet)
    try:
        fast = camkit.AblationCAM(resnet, "layer4", top_channels=64, path="downstream")
        result = fast.explain(x)
    finally:
        stop()
    assert full.path_used == "full" and fast.path_used == "downstream"
    assert seen == [2, 2]  # the clean pass, then all 128 copies fanned out from one pass of both images
    torch.testing.assert_close(result.maps, expected.maps, atol=1e-4, rtol=0)


def test_a_layer_inside_a_residual_block_fans_out_at_the_block(resnet, caplog) -> None:
    # The block adds its input back after conv2: copies made at conv2's output would meet a residual of
    # the images alone, so the copies are made at the block's input instead.
    x = torch.randn(2, 3, 64, 64)
    cam = camkit.AblationCAM(resnet, "layer4.0.conv2", top_channels=16)
    seen, stop = forward_batch_sizes(resnet)
    with caplog.at_level(logging.INFO, logger="camkit"):
        maps = cam(x)
    stop()
    assert cam.path_used == "downstream from 'layer4.0'" and "downstream from 'layer4.0' path" in caplog.text
    assert seen == [2, 2, 2]  # the clean pass, the refused try at conv2, the pass fanned out at the block
    torch.testing.assert_close(maps, camkit.AblationCAM(resnet, "layer4.0.conv2", top_channels=16, path="full")(x))
    assert no_hooks_left(resnet)


def test_a_vit_token_layer_takes_the_fast_path() -> None:
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    cam = camkit.AblationCAM(vit)
    maps = cam(x)
    assert cam.path_used == "downstream from 'encoder.layers.encoder_layer_1'"
    torch.testing.assert_close(maps, camkit.AblationCAM(vit, path="full")(x), atol=1e-6, rtol=0)
    assert no_hooks_left(vit)


class BatchMixingHead(torch.nn.Module):
    """A head that centres its features over the batch: the unablated copies' scores expose it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = tiny_strided_cnn()[:4]
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean((2, 3))
        return self.fc(pooled - pooled.mean(0, keepdim=True))


def test_the_unablated_copies_catch_a_downstream_that_mixes_the_batch(caplog) -> None:
    torch.manual_seed(2)
    model = BatchMixingHead().eval()
    cam = camkit.AblationCAM(model, "features.3")
    with caplog.at_level(logging.INFO, logger="camkit"):
        maps = cam(torch.randn(3, 3, 16, 16))
    assert cam.path_used == "full" and torch.isfinite(maps).all()
    assert "no downstream-only pass reproduced the clean scores" in caplog.text
    with pytest.raises(camkit.CamkitError, match="path='auto'"):
        camkit.AblationCAM(model, "features.3", path="downstream")(torch.randn(3, 3, 16, 16))


def test_chunking_and_a_tiny_budget_never_change_the_result() -> None:
    torch.manual_seed(4)
    model = tiny_strided_cnn()
    x = torch.randn(2, 3, 16, 16)
    whole = camkit.AblationCAM(model, "3")(x)
    seen, stop = forward_batch_sizes(model)
    try:
        tiny = camkit.AblationCAM(model, "3", memory_budget=1)(x)
    finally:
        stop()
    assert len(seen) == 1 + 24  # the clean pass, then one chunk per ablated copy
    # w_k = (S - S_k) / S divides a small difference: the batch size's float rounding of S_k (~1e-7)
    # shows at ~1e-5 in the maps.
    torch.testing.assert_close(tiny, whole, atol=1e-4, rtol=0)


def test_top_channels_leaves_the_others_at_weight_zero() -> None:
    torch.manual_seed(3)
    model = tiny_strided_cnn()
    x = torch.randn(2, 3, 16, 16)
    some = camkit.AblationCAM(model, "3", top_channels=3).explain(x)
    everything = camkit.AblationCAM(model, "3").explain(x)
    assert not torch.allclose(some.layer_maps, everything.layer_maps)
    assert torch.isfinite(some.maps).all()


def test_options_are_validated(resnet) -> None:
    with pytest.raises(camkit.CamkitError, match="path must be"):
        camkit.AblationCAM(resnet, path="sideways")


def test_nan_scores_raise_instead_of_blank_maps() -> None:
    check_refuses_nan_scores("ablationcam")
