"""SS-CAM: torchcam's SSCAM as a cross-check, reproducible from a seed, independent of chunking."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchcam.methods

import camkit

from ..helpers import check_refuses_nan_scores, correlation, tiny_strided_cnn

LAYER = "3"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_strided_cnn()


def torchcam_maps(name: str, model, x, classes, **options) -> torch.Tensor:
    """torchcam's maps for ``classes``, upsampled to the input as camkit's are."""
    with getattr(torchcam.methods, name)(model, target_layer=LAYER, input_shape=tuple(x.shape[1:]),
                                         **options) as extractor:
        maps = extractor(classes, model(x))[0]
    return F.interpolate(maps[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def test_correlates_with_torchcam(model) -> None:
    x = torch.randn(4, 3, 24, 24)
    classes = [0, 1, 2, 3]
    ours = camkit.SSCAM(model, LAYER)(x, classes)  # the paper's 35 samples, sigma 2
    torch.manual_seed(0)
    theirs = torchcam_maps("SSCAM", model, x, classes)
    # torchcam softmaxes the mean logit increase over channels and normalises masks before
    # upsampling; camkit averages the class probability as the Score-CAM authors' code does.
    assert correlation(ours, theirs) > 0.9


def test_reproducible_from_the_seed_and_independent_of_chunking(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    first = camkit.SSCAM(model, LAYER, n_samples=4, seed=3)(x)
    torch.testing.assert_close(camkit.SSCAM(model, LAYER, n_samples=4, seed=3)(x), first, atol=0, rtol=0)
    chunked = camkit.SSCAM(model, LAYER, n_samples=4, seed=3, memory_budget=1)(x)
    torch.testing.assert_close(chunked, first, atol=1e-6, rtol=0)
    assert (camkit.SSCAM(model, LAYER, n_samples=4, seed=4)(x) - first).abs().max() > 1e-3


def test_without_noise_it_is_score_cam(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(camkit.SSCAM(model, LAYER, n_samples=2, sigma=0.0)(x), camkit.ScoreCAM(model, LAYER)(x),
                               atol=1e-6, rtol=0)


def test_options_are_validated(model) -> None:
    with pytest.raises(camkit.CamkitError, match="n_samples"):
        camkit.SSCAM(model, n_samples=0)
    with pytest.raises(camkit.CamkitError, match="sigma"):
        camkit.SSCAM(model, sigma=-1.0)


def test_nan_scores_raise_instead_of_blank_maps() -> None:
    check_refuses_nan_scores("sscam", n_samples=2)
