"""Attention rollout against a float64 rollout of the probabilities extracted by hand, for three ViT libraries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit

from ..helpers import VIT_FAMILIES, explicit_attention_forward, reference_finish, rollout_reference, tiny_transformer


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_rollout_equals_float64_reference_for_every_fusion_and_discard(family: str) -> None:
    model = tiny_transformer(family)
    x = torch.randn(3, 3, 32, 32)
    _, probabilities = explicit_attention_forward(model, family, x)
    for fusion, discard in (("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)):
        expected = rollout_reference([p.detach() for p in probabilities], 1, fusion, discard)
        ours = camkit.AttentionRollout(model, head_fusion=fusion, discard_ratio=discard)(x)
        np.testing.assert_allclose(ours.numpy(), reference_finish(expected.reshape(3, 4, 4), (32, 32)), atol=1e-4)


def test_rows_are_normalised_not_columns_as_the_popular_script() -> None:
    model = tiny_transformer("timm")
    x = torch.randn(2, 3, 32, 32)
    _, probabilities = explicit_attention_forward(model, "timm", x)
    probabilities = [p.detach() for p in probabilities]
    size = (32, 32)

    def finished(relevance: torch.Tensor) -> np.ndarray:
        return reference_finish(relevance.reshape(2, 4, 4), size)

    # Mean fusion leaves rows summing to 1: both normalisations agree, and camkit equals the script.
    mean = camkit.AttentionRollout(model)(x).numpy()
    np.testing.assert_allclose(mean, finished(rollout_reference(probabilities, 1, "mean", normalise="columns")),
                               atol=1e-4)
    # Max fusion does not: camkit follows the paper's rows, and the script's columns give another map.
    ours = camkit.AttentionRollout(model, head_fusion="max")(x).numpy()
    columns = finished(rollout_reference(probabilities, 1, "max", normalise="columns"))
    np.testing.assert_allclose(ours, finished(rollout_reference(probabilities, 1, "max")), atol=1e-4)
    assert np.abs(ours - columns).max() > 1e-2


def test_gradient_free_class_agnostic_and_options_checked() -> None:
    model = tiny_transformer("torchvision")
    x = torch.randn(2, 3, 32, 32)
    explainer = camkit.AttentionRollout(model)
    with torch.no_grad():
        plain = explainer(x)
    with torch.inference_mode():
        torch.testing.assert_close(explainer(x, [3, 1]), plain)
    assert not explainer.uses_gradients and not explainer.class_specific
    with pytest.raises(camkit.CamkitError, match="head_fusion"):
        camkit.AttentionRollout(model, head_fusion="median")
    with pytest.raises(camkit.CamkitError, match="discard_ratio"):
        camkit.AttentionRollout(model, discard_ratio=1.0)
    # Test-time augmentation and passes of copies come from the base.
    assert camkit.AttentionRollout(model, augment=True, batch_size=2)(x).shape == (2, 32, 32)
