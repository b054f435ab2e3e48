"""Chefer et al.'s generic rule against a float64 reference from hand-extracted probabilities and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit

from ..helpers import (
    VIT_FAMILIES, chefer_reference, class_scores, explicit_attention_forward, no_hooks_left, reference_finish,
    tiny_transformer,
)


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_transformer_attribution_equals_float64_reference(family: str) -> None:
    model = tiny_transformer(family)
    model.requires_grad_(False)
    x, classes = torch.randn(3, 3, 32, 32), [0, 2, 4]
    output, probabilities = explicit_attention_forward(model, family, x)
    class_scores(output, classes).sum().backward()
    expected = chefer_reference([p.detach() for p in probabilities], [p.grad for p in probabilities], 1)
    ours = camkit.TransformerAttribution(model)(x, classes)
    np.testing.assert_allclose(ours.numpy(), reference_finish(expected.reshape(3, 4, 4), (32, 32)), atol=1e-4)
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_class_specific_and_callable_targets() -> None:
    model = tiny_transformer("timm")
    x = torch.randn(2, 3, 32, 32)
    explainer = camkit.TransformerAttribution(model)
    first, second = explainer(x, 0), explainer(x, 3)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(explainer(x, lambda out: out[:, 3]), second)
    result = explainer.explain(x)
    assert torch.equal(result.targets, model(x).argmax(1)) and result.layer_maps.shape == (2, 4, 4)
