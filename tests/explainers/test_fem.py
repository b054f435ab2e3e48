"""FEM against the authors' formula in float64 and pytorch-grad-cam's variant."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import FEM as PeerFEM

import camkit

from ..helpers import check_method_contract, peer_maps, reference_capture, reference_finish


def _binary(activations: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    means = activations.mean(dim=(2, 3), keepdim=True)
    stds = torch.from_numpy(activations.numpy().std(axis=(2, 3), keepdims=True))  # numpy's population std
    return means, (activations > means + k * stds).double()


@pytest.mark.parametrize("k", [2.0, 1.0])
def test_fem_equals_the_authors_formula_and_the_peers_variant(k) -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, classes = torch.randn(3, 3, 64, 96), [1, 7, 4]
    activations, _ = reference_capture(model, model.layer4, x, classes)
    means, above = _binary(activations, k)
    ours = camkit.FEM(model, "layer4", k=k)(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish((means * above).sum(1), (64, 96)), atol=1e-4)
    variant = camkit.FEM(model, "layer4", k=k, weighting="pytorch-grad-cam")(x, classes)
    np.testing.assert_allclose(variant.numpy(), reference_finish((above.mean((2, 3), keepdim=True) * activations).sum(1),
                                                                 (64, 96)), atol=1e-4)
    theirs = peer_maps(lambda model, target_layers: PeerFEM(model, target_layers, k=k), model, [model.layer4], x,
                       classes)
    np.testing.assert_allclose(variant.numpy(), theirs, atol=2e-3)
    assert not torch.allclose(ours, variant, atol=1e-2)  # the two weightings are different maps


def test_fem_is_class_agnostic_and_checks_its_options() -> None:
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    fem = camkit.FEM(model, "layer4")
    torch.testing.assert_close(fem(x, 0), fem(x, 5))
    assert not fem.uses_gradients and not fem.class_specific
    with pytest.raises(camkit.CamkitError, match="weighting"):
        camkit.FEM(model, "layer4", weighting="mean")


def test_fem_contract() -> None:
    check_method_contract("fem")
