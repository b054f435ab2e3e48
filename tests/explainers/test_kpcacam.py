"""KPCA-CAM against scikit-learn's KernelPCA with the sign rule, and pytorch-grad-cam (rbf) up to its sign."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import KPCA_CAM as PeerKPCACAM
from sklearn.decomposition import KernelPCA

import camkit
from camkit.ops.pca import kernel_principal_projection

from ..helpers import check_method_contract, layer_output, matches_up_to_sign, reference_finish, signed_projections


@pytest.mark.parametrize("gamma", [None, 0.01])
def test_kpcacam_equals_scikit_learn_and_pytorch_grad_cam_up_to_its_sign(gamma) -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 96, 96)
    activations = layer_output(model, model.layer3, x)

    def kernel_pca(positions: np.ndarray) -> np.ndarray:
        rate = 1.0 / positions.shape[1] if gamma is None else gamma
        return KernelPCA(n_components=1, kernel="rbf", gamma=rate).fit_transform(positions)[:, 0]

    signed, _ = signed_projections(activations, kernel_pca)
    ours = camkit.KPCACAM(model, "layer3", gamma=gamma)(x)
    np.testing.assert_allclose(ours.numpy(), reference_finish(signed, (96, 96)), atol=1e-4)
    peer = PeerKPCACAM(model=model, target_layers=[model.layer3], kernel="rbf", gamma=gamma)
    try:
        theirs = peer(input_tensor=x, targets=None)
    finally:
        peer.activations_and_grads.release()
    assert (matches_up_to_sign(theirs, signed, (96, 96)) != 0).all()


def test_kpcacam_sign_follows_the_channel_mean() -> None:
    activations = torch.rand(2, 16, 7, 7) * 0.1
    activations[:, :, 2, 3] += 5.0
    assert torch.equal(kernel_principal_projection(activations).flatten(1).argmax(1), torch.tensor([2 * 7 + 3] * 2))


def test_kpcacam_refuses_a_bad_gamma() -> None:
    with pytest.raises(camkit.CamkitError, match="gamma must be a positive number"):
        camkit.KPCACAM(torchvision.models.resnet18(num_classes=2), gamma=0)


def test_kpcacam_contract() -> None:
    check_method_contract("kpcacam")
