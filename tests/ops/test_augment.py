"""augment=True against pytorch-grad-cam's aug_smooth (flips x intensity scales, maps flipped back and averaged)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM

import camkit
from camkit.ops.augment import COPIES, augmented_batch, merged_maps

from ..helpers import peer_maps, reference_normalise, tiny_cnn


def test_augment_equals_pytorch_grad_cam_aug_smooth() -> None:
    model = tiny_cnn().eval()
    x = torch.randn(3, 3, 16, 20)
    classes = [3, 0, 2]
    ours = camkit.GradCAM(model, "3", augment=True)(x, classes)
    theirs = peer_maps(PeerGradCAM, model, [model[3]], x, classes, aug_smooth=True)
    # pytorch-grad-cam leaves the average un-normalised; camkit normalises it as every map.
    np.testing.assert_allclose(ours.numpy(), reference_normalise(torch.from_numpy(theirs)).numpy(), atol=1e-4)


def test_copies_map_back_onto_the_image() -> None:
    x = torch.arange(24.0).reshape(2, 1, 3, 4)
    copies = augmented_batch(x)
    assert copies.shape == (COPIES * 2, 1, 3, 4) and torch.equal(copies[:2], x)
    # a map that marks a pixel of each copy comes back onto the same pixel of the image
    maps = copies[:, 0] / copies[:, 0].flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(merged_maps(maps, 2), x[:, 0] / x[:, 0].flatten(1).amax(1)[:, None, None])


def test_augment_keeps_the_explained_classes_and_the_model_as_found() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = camkit.GradCAMPlusPlus(model, "layer4", augment=True).explain(x, [1, 2])
    assert result.targets.tolist() == [1, 2] and result.layer_maps.shape == (2, 1, 1)
    assert result.predictions.shape == (2,) and result.maps.shape == (2, 32, 32)
    assert all(p.grad is None for p in model.parameters())


def test_augment_in_passes_of_batch_size_equals_one_pass() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
    try:
        per_copy = camkit.GradCAM(model, "layer3", augment=True, batch_size=2).explain(x, [1, 2])
        default = camkit.GradCAM(model, "layer3", augment=True).explain(x, [1, 2])
        odd = camkit.GradCAM(model, "layer3", augment=True, batch_size=5)(x, lambda out: out[:, 3])
    finally:
        handle.remove()
    # batch_size=2: one copy of the batch per pass; default: 8 images (four whole copies); 5: two copies per pass
    assert seen == [2] * COPIES + [8, 4] + [4, 4, 4]
    torch.testing.assert_close(per_copy.maps, default.maps, atol=1e-5, rtol=0)
    assert torch.equal(per_copy.predictions, default.predictions) and per_copy.targets.tolist() == [1, 2]
    assert odd.shape == (2, 32, 32) and torch.isfinite(odd).all()
