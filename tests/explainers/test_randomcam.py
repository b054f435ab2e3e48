"""Random-CAM: reproducible by seed, uniform(-1, 1) weights, equal to pytorch-grad-cam's given the same draws."""
from __future__ import annotations

from unittest import mock

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import RandomCAM as PeerRandomCAM

import camkit

from ..helpers import check_method_contract, peer_maps, reference_capture, reference_finish, tiny_cnn


def _draws(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1


def test_randomcam_is_the_seeded_weighted_sum_and_the_peer_with_those_weights() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), [1, 7, 4]
    activations, _ = reference_capture(model, model.layer4, x, classes)
    weights = _draws(3, (3, 512))
    ours = camkit.RandomCAM(model, "layer4", seed=3)(x, classes)
    expected = reference_finish((weights[:, :, None, None] * activations).sum(1), (64, 96))
    np.testing.assert_allclose(ours.numpy(), np.nan_to_num(expected), atol=1e-4)  # a map all below 0 is zeros
    with mock.patch("numpy.random.uniform", return_value=weights.numpy()):
        theirs = peer_maps(PeerRandomCAM, model, [model.layer4], x, classes)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3)


def test_randomcam_seed_reproduces_and_none_draws_afresh() -> None:
    model, x = tiny_cnn(), torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(camkit.RandomCAM(model, "3", seed=1)(x), camkit.RandomCAM(model, "3", seed=1)(x))
    assert not torch.equal(camkit.RandomCAM(model, "3", seed=1)(x), camkit.RandomCAM(model, "3", seed=2)(x))
    fresh = camkit.RandomCAM(model, "3")
    assert not torch.equal(fresh(x), fresh(x))
    state = torch.random.get_rng_state()
    camkit.RandomCAM(model, "3", seed=1)(x)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


def test_randomcam_contract() -> None:
    check_method_contract("randomcam", seed=0)
