"""IS-CAM: torchcam's ISCAM as a cross-check, one step equals Score-CAM, independent of chunking."""
from __future__ import annotations

import pytest
import torch

import camkit

from ..helpers import check_refuses_nan_scores, correlation, tiny_strided_cnn
from .test_sscam import LAYER, torchcam_maps


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_strided_cnn()


def test_correlates_with_torchcam(model) -> None:
    x = torch.randn(4, 3, 24, 24)
    classes = [4, 3, 2, 1]
    ours = camkit.ISCAM(model, LAYER)(x, classes)
    # The same integration path; torchcam softmaxes the mean logit increase over channels.
    assert correlation(ours, torchcam_maps("ISCAM", model, x, classes)) > 0.9


def test_one_step_is_score_cam(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(camkit.ISCAM(model, LAYER, n_samples=1)(x), camkit.ScoreCAM(model, LAYER)(x),
                               atol=1e-6, rtol=0)


def test_the_path_changes_the_map_and_chunking_does_not(model) -> None:
    x = torch.randn(2, 3, 24, 24)
    whole = camkit.ISCAM(model, LAYER, n_samples=4)(x)
    torch.testing.assert_close(camkit.ISCAM(model, LAYER, n_samples=4, memory_budget=1)(x), whole, atol=1e-6, rtol=0)
    assert (whole - camkit.ScoreCAM(model, LAYER)(x)).abs().max() > 1e-4


def test_options_are_validated(model) -> None:
    with pytest.raises(camkit.CamkitError, match="n_samples"):
        camkit.ISCAM(model, n_samples=0)


def test_nan_scores_raise_instead_of_blank_maps() -> None:
    check_refuses_nan_scores("iscam", n_samples=2)
