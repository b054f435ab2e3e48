"""ROAD's linear imputation against a float64 sparse direct solve (scipy), in 2-D and 3-D, all systems batched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camkit import CamkitError
from camkit.ops.imputation import linear_imputation, neighbour_weights, noisy_linear_imputation

from ..helpers import linear_imputation_reference

pytestmark = pytest.mark.usefixtures("single_thread")


def test_neighbour_weights_are_the_papers_in_2d_and_halve_per_axis_in_3d() -> None:
    plane = neighbour_weights(2)
    torch.testing.assert_close(plane, torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                                                   dtype=torch.float64))
    volume = neighbour_weights(3)
    assert volume[1, 1, 0].item() == 1 / 14 and volume[1, 0, 0].item() == 1 / 28 and volume[0, 0, 0].item() == 1 / 56
    assert volume[1, 1, 1].item() == 0 and abs(volume.sum().item() - 1) < 1e-15


def _blob_masks(count: int, shape: tuple[int, ...], fractions: list[float], seed: int) -> torch.Tensor:
    """CAM-like removals: the top fraction of a smooth random field, one mask per (image, fraction)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, *(4 for _ in shape), generator=generator)
    fields = F.interpolate(coarse, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear")[:, 0].flatten(1)
    masks = [fields >= fields.quantile(1 - fraction, dim=1, keepdim=True) for fraction in fractions]
    return torch.cat(masks).reshape(-1, *shape)


@pytest.mark.parametrize("solver", ["direct", "cg"])  # the CPU's default, and the accelerators' run on the CPU
def test_2d_imputation_matches_a_float64_direct_solve(solver: str) -> None:
    fractions = [0.1, 0.5, 0.9, 1.0]
    images = torch.rand(3, 3, 24, 20).repeat(len(fractions), 1, 1, 1)
    removed = _blob_masks(3, (24, 20), fractions, seed=1)
    removed[0, ::3, ::2] = True  # scattered holes as well as blobs
    filled = linear_imputation(images, removed, solver=solver)  # 12 images x 3 channels, one batched solve
    for index in range(len(images) - 3):  # the last three have every pixel removed: checked below
        expected = linear_imputation_reference(images[index].double().numpy(), removed[index].numpy())
        np.testing.assert_allclose(filled[index].double().numpy(), expected, atol=1e-5, rtol=0)
    assert torch.equal(filled[~removed[:, None].expand_as(filled)], images[~removed[:, None].expand_as(images)])
    # Nothing known anywhere: no information, the minimum-norm fill 0, never NaN.
    assert torch.equal(filled[-3:], torch.zeros_like(filled[-3:]))


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_3d_imputation_uses_the_26_neighbourhood_and_matches_a_direct_solve(solver: str) -> None:
    volumes = torch.rand(2, 2, 6, 7, 8)
    removed = _blob_masks(2, (6, 7, 8), [0.6], seed=2)
    filled = linear_imputation(volumes, removed, solver=solver)
    for index in range(2):
        expected = linear_imputation_reference(volumes[index].double().numpy(), removed[index].numpy())
        np.testing.assert_allclose(filled[index].double().numpy(), expected, atol=1e-5, rtol=0)


def test_noise_is_on_the_removed_pixels_only_and_seeded() -> None:
    images = torch.rand(2, 3, 32, 32)
    removed = _blob_masks(2, (32, 32), [0.5], seed=3)
    clean = linear_imputation(images, removed)
    noisy = noisy_linear_imputation(images, removed, noise=0.01, generator=torch.Generator().manual_seed(7))
    again = noisy_linear_imputation(images, removed, noise=0.01, generator=torch.Generator().manual_seed(7))
    assert torch.equal(noisy, again)
    difference = (noisy - clean)
    outside = ~removed[:, None].expand_as(images)
    assert torch.equal(difference[outside], torch.zeros_like(difference[outside]))
    assert abs(difference[~outside].std().item() - 0.01) < 5e-4
    assert torch.equal(noisy_linear_imputation(images, removed, noise=0), clean)


def test_an_unknown_solver_is_a_user_error() -> None:
    with pytest.raises(CamkitError, match="solver must be"):
        linear_imputation(torch.rand(1, 1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), solver="lu")


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_nothing_removed_leaves_the_images_as_they_are(solver: str) -> None:
    images = torch.rand(2, 3, 8, 9)
    removed = torch.zeros(2, 8, 9, dtype=torch.bool)
    removed[1, 2:5, 3:6] = True
    filled = linear_imputation(images, removed, solver=solver)
    assert torch.equal(filled[0], images[0])
    assert not torch.equal(filled[1], images[1]) and filled[1].isfinite().all()
