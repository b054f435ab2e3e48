"""The pytorch-grad-cam compatibility layer: their API in, camkit's exact maps out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import camkit
from camkit.compat import pytorch_grad_cam as compat

from ..helpers import peer_maps

PAIRS = [(compat.GradCAM, camkit.GradCAM), (compat.GradCAMPlusPlus, camkit.GradCAMPlusPlus),
         (compat.HiResCAM, camkit.HiResCAM), (compat.XGradCAM, camkit.XGradCAM), (compat.LayerCAM, camkit.LayerCAM),
         (compat.GradCAMElementWise, camkit.GradCAMElementWise), (compat.EigenCAM, camkit.EigenCAM),
         (compat.EigenGradCAM, camkit.EigenGradCAM), (compat.KPCA_CAM, camkit.KPCACAM),
         (compat.ScoreCAM, camkit.ScoreCAM), (compat.AblationCAM, camkit.AblationCAM)]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=6).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("theirs", "ours"), PAIRS, ids=lambda cls: cls.__name__)
def test_their_code_gives_camkits_exact_maps(model, x, theirs, ours) -> None:
    options = {"top_channels": 16} if ours in (camkit.ScoreCAM, camkit.AblationCAM) else {}
    with theirs(model=model, target_layers=[model.layer4], **options) as cam:
        grayscale = cam(input_tensor=x, targets=[compat.ClassifierOutputTarget(1), compat.ClassifierOutputTarget(4)])
    assert isinstance(grayscale, np.ndarray) and grayscale.dtype == np.float32 and grayscale.shape == (2, 64, 64)
    np.testing.assert_array_equal(grayscale, ours(model, "layer4", **options)(x, [1, 4]).numpy())


def test_their_own_target_objects_and_options(model, x) -> None:
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    cam = compat.GradCAM(model=model, target_layers=[model.layer3, model.layer4])
    fused = camkit.GradCAM(model, ["layer3", "layer4"])
    np.testing.assert_array_equal(cam(input_tensor=x, targets=[ClassifierOutputTarget(2)] * 2),
                                  fused(x, [2, 2]).numpy())
    np.testing.assert_array_equal(cam(input_tensor=x), fused(x).numpy())  # targets=None: each image's top class
    # any other per-image target runs as one callable per image: the softmax probability's map
    softmax = cam(input_tensor=x, targets=[ClassifierOutputSoftmaxTarget(2), ClassifierOutputSoftmaxTarget(3)])
    ours = fused(x, lambda output: output.softmax(1)[[0, 1], [2, 3]])
    np.testing.assert_allclose(softmax, ours.numpy(), atol=1e-5)
    smoothed = cam(input_tensor=x, targets=[compat.ClassifierOutputTarget(2)] * 2, aug_smooth=True, eigen_smooth=True)
    expected = camkit.GradCAM(model, ["layer3", "layer4"], augment=True, eigen_smooth=True)(x, [2, 2])
    np.testing.assert_array_equal(smoothed, expected.numpy())
    assert cam.explanation.targets.tolist() == [2, 2]


def test_close_to_pytorch_grad_cam_itself(model, x) -> None:
    from pytorch_grad_cam import GradCAM

    ours = compat.GradCAM(model=model, target_layers=[model.layer4])(
        input_tensor=x, targets=[compat.ClassifierOutputTarget(1), compat.ClassifierOutputTarget(4)])
    np.testing.assert_allclose(ours, peer_maps(GradCAM, model, [model.layer4], x, [1, 4]), atol=1e-4)


def test_segmentation_target_equals_camkits() -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                         aux_loss=False).eval()
    x = torch.randn(1, 3, 48, 48)
    mask = np.zeros((48, 48), dtype=np.float32)
    mask[10:30, 5:25] = 1

    class OutOnly(torch.nn.Module):  # their targets get the logits tensor, as in their tutorial
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images)["out"]

    wrapped = OutOnly()
    theirs = compat.GradCAM(model=wrapped, target_layers=[wrapped.model.backbone.layer4])(
        input_tensor=x, targets=[compat.SemanticSegmentationTarget(2, mask)])
    ours = camkit.GradCAM(model, "backbone.layer4")(x, camkit.SegmentationTarget(2, torch.from_numpy(mask)))
    np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-6)


def test_show_cam_on_image_at_the_images_size() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((30, 40, 3), dtype=np.float32)
    small_map = rng.random((8, 10), dtype=np.float32)
    picture = compat.show_cam_on_image(image, small_map, use_rgb=True)
    assert picture.shape == (30, 40, 3) and picture.dtype == np.uint8
    full = torch.nn.functional.interpolate(torch.from_numpy(small_map)[None, None], size=(30, 40), mode="bilinear",
                                           align_corners=False)[0]
    expected = camkit.viz.overlay(torch.from_numpy(image).permute(2, 0, 1)[None], full, alpha=0.5)
    np.testing.assert_array_equal(picture, camkit.viz.to_uint8_hwc(expected)[0].numpy())
    np.testing.assert_array_equal(compat.show_cam_on_image(image, small_map), picture[..., ::-1])  # BGR by default
    import cv2

    assert compat.show_cam_on_image(image, small_map, colormap=cv2.COLORMAP_JET).shape == (30, 40, 3)
    with pytest.raises(camkit.CamkitError, match="index the batch"):
        compat.show_cam_on_image(image, small_map[None])
    with pytest.raises(camkit.CamkitError, match=r"floats above 1"):
        compat.show_cam_on_image(image * 255, small_map)


def test_bad_constructor_arguments_are_camkit_errors(model) -> None:
    with pytest.raises(camkit.CamkitTypeError, match=r"target_layers must be a list of layers"):
        compat.GradCAM(model=model, target_layers=model.layer4)
    with pytest.raises(camkit.CamkitTypeError, match="no option 'use_cuda'"):
        compat.GradCAM(model=model, target_layers=[model.layer4], use_cuda=True)


def test_detection_target_scores_as_theirs() -> None:
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    from ..helpers import tiny_detector

    model, detections, x = tiny_detector()
    per_image = [(d["labels"][:2].tolist(), d["boxes"][:2].numpy()) for d in detections]
    ours = [compat.FasterRCNNBoxScoreTarget(labels, boxes) for labels, boxes in per_image]
    theirs = [FasterRCNNBoxScoreTarget(labels, boxes) for labels, boxes in per_image]
    with torch.no_grad():
        outputs = model(list(x))
    for mine, peer, output in zip(ours, theirs, outputs):
        torch.testing.assert_close(mine(output), peer(output).reshape(()).to(torch.float32))
    cam = compat.GradCAM(model=model, target_layers=[model.backbone.body["16"]])
    maps = cam(input_tensor=x, targets=ours)
    assert maps.shape == (2, 128, 160) and np.isfinite(maps).all() and maps.max() == 1
