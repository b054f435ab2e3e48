"""LeGrad equals torchcam's on torchvision ViTs, and a float64 per-block loop (the authors' recipe) on timm and
Hugging Face ViTs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit

from ..helpers import explicit_attention_forward, reference_finish, tiny_transformer, torchcam_maps


def test_legrad_equals_torchcam_on_torchvision_vit() -> None:
    model = tiny_transformer("torchvision")
    x, classes = torch.randn(3, 3, 32, 32), [1, 3, 4]
    blocks = list(model.encoder.layers)
    np.testing.assert_allclose(camkit.LeGrad(model)(x, classes).numpy(),
                               torchcam_maps("LeGrad", model, blocks, x, classes), atol=1e-3)
    np.testing.assert_allclose(camkit.LeGrad(model, blocks[-2:])(x, classes).numpy(),
                               torchcam_maps("LeGrad", model, blocks[-2:], x, classes), atol=1e-3)


def _projection(model: torch.nn.Module, family: str):
    if family == "timm":  # vit_tiny pools the class token; fc_norm is the identity
        return lambda tokens: model.head(model.norm(tokens.mean(dim=1)))
    return lambda tokens: model.classifier(model.vit.layernorm(tokens.mean(dim=1)))


@pytest.mark.parametrize("family", ["timm", "huggingface"])
def test_legrad_equals_a_float64_per_block_loop(family: str) -> None:
    model = tiny_transformer(family)
    x, classes = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 1])
    tokens: list[torch.Tensor] = []
    output, probabilities = explicit_attention_forward(model, family, x, block_outputs=tokens)
    twin_head = _projection(model, family)
    total = 0
    for block_tokens, block_probabilities in zip(tokens, probabilities):
        scores = twin_head(block_tokens.float()).gather(1, classes[:, None]).sum()
        gradient = torch.autograd.grad(scores, block_probabilities, retain_graph=True)[0]
        total = total + gradient.clamp(min=0).mean(dim=(1, 2))[:, 1:]
    expected = reference_finish(total.reshape(3, 4, 4), (32, 32))
    np.testing.assert_allclose(camkit.LeGrad(model)(x, classes).numpy(), expected, atol=1e-3)


def test_score_projection_is_needed_where_no_head_is_known() -> None:
    model = tiny_transformer("timm")
    wrapped = torch.nn.Sequential(model)
    with pytest.raises(camkit.CamkitError, match="score_projection="):
        camkit.LeGrad(wrapped)
    own = camkit.LeGrad(wrapped, score_projection=lambda tokens: model.forward_head(model.norm(tokens)))
    assert own(torch.randn(2, 3, 32, 32), [0, 1]).shape == (2, 32, 32)
    with pytest.raises(camkit.CamkitTypeError, match="score_projection"):
        camkit.LeGrad(model, score_projection="head")
