"""Seg-Eigen-CAM against numpy's SVD of |g| * A with eq. 13's sign rule, and pytorch-grad-cam."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import SegEigenCAM as PeerSegEigenCAM

import camkit

from ..helpers import (check_method_contract, first_principal_component, peer_maps, reference_capture,
                       reference_finish)


def test_segeigencam_equals_numpy_svd_with_eq13_and_the_peer() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), [1, 7, 4]
    activations, gradients = reference_capture(model, model.layer4, x, classes)
    projections = []
    for image in (gradients.abs() * activations).numpy():
        projection = first_principal_component(image.reshape(image.shape[0], -1).T)
        projection = -projection if abs(projection.min()) > abs(projection.max()) else projection
        projections.append(projection.reshape(image.shape[1:]))
    ours = camkit.SegEigenCAM(model, "layer4")(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish(torch.from_numpy(np.stack(projections)), (64, 96)),
                               atol=1e-4)
    np.testing.assert_allclose(ours.numpy(), peer_maps(PeerSegEigenCAM, model, [model.layer4], x, classes), atol=2e-3)


def test_segeigencam_explains_a_segmenter() -> None:
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                         aux_loss=False).eval()
    x = torch.randn(1, 3, 32, 32)
    maps = camkit.SegEigenCAM(model, "backbone.layer4")(x, camkit.SegmentationTarget(1))
    assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam", "kpcacam", "segeigencam"])
def test_eigen_smooth_is_an_accepted_no_op_on_principal_component_methods(method) -> None:
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    cls = camkit.METHODS[method]
    torch.testing.assert_close(cls(model, "layer4", eigen_smooth=True)(x, 1), cls(model, "layer4")(x, 1))
    with pytest.raises(camkit.CamkitTypeError, match="eigen_smooth"):
        cls(model, "layer4", eigen_smooth="yes")


def test_segeigencam_contract() -> None:
    check_method_contract("segeigencam")
