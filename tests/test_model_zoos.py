"""Real Hugging Face and timm architectures (small, random init, nothing downloaded).

For each: the automatic layer is the one DESIGN.md's rule names, the maps keep the
contract, the model is left as found, and the tokens are laid on the architecture's
own grid with its class, distillation and register tokens dropped (a float64
Grad-CAM from plain hooks and a hand-written layout).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import camkit

from .helpers import no_hooks_left, quick_options, reference_capture, reference_finish
from .zoo import ZOO, ZooModel, by_hand


pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]


def _scores(entry: ZooModel, classes: list[int]):
    """What the explainer is asked for, and the same score as a function of the output for the reference."""
    if entry.target is not None:
        score = entry.target()
        return score, score

    def class_logits(output) -> torch.Tensor:
        logits = output if isinstance(output, torch.Tensor) else output.logits
        return logits.gather(1, torch.tensor(classes)[:, None]).squeeze(1)

    return classes, class_logits


def _user_state(model: torch.nn.Module) -> None:
    """Training mode with one frozen, evaluating part: what a fine-tuning user hands over."""
    model.train()
    first = next(model.children())
    first.eval()
    for parameter in first.parameters():
        parameter.requires_grad_(False)


def _state(model: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("name", list(ZOO))
def test_automatic_layer_maps_grid_and_model_left_as_found(name: str, caplog) -> None:
    entry = ZOO[name]
    model = entry.build()
    _user_state(model)
    before = _state(model)
    x = torch.randn(2, 3, *entry.size)
    target, score = _scores(entry, [1, 3])
    cam = camkit.GradCAM(model)
    with caplog.at_level(logging.INFO, logger="camkit"):
        maps = cam(x, target)
    expected_layer = entry.layer(model)
    assert cam.target_layer_name == expected_layer, f"{name}: {entry.why}"
    assert f"camkit chose target layer {expected_layer!r}" in caplog.text
    assert maps.shape == (2, *entry.size) and maps.dtype == torch.float32 and maps.device == x.device
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).amax(1) == 1).all(), f"{name}: an empty map"
    assert _state(model) == before and no_hooks_left(model)
    assert all(p.grad is None for p in model.parameters())

    # The same maps from plain hooks in float64, the tokens laid out by hand from the architecture
    # (explaining runs the model in eval mode, so the reference does too; the input requires grad
    # because the part of the model before the layer may be frozen).
    model.eval()
    activations, gradients = reference_capture(model, cam.target_layer, x.clone().requires_grad_(True), score)
    activations, gradients = by_hand(activations, entry), by_hand(gradients, entry)
    assert activations.shape[2:] == entry.grid
    expected = reference_finish((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1), entry.size)
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-4)


def test_levit_automatic_layer_is_the_last_stage_last_block() -> None:
    """``stages`` returns the output of ``stages.2.blocks.3`` itself: the same maps, with and without gradients."""
    entry = ZOO["timm-levit"]
    model = entry.build().eval()
    x = torch.randn(1, 3, *entry.size)
    for cls in (camkit.GradCAM, camkit.EigenCAM, camkit.ScoreCAM):
        automatic = cls(model, **quick_options(cls))
        torch.testing.assert_close(automatic(x, 2), cls(model, "stages.2.blocks.3", **quick_options(cls))(x, 2))
        assert automatic.target_layer_name == "stages"
    assert no_hooks_left(model)


@pytest.mark.parametrize("name", ["hf-deit-distilled", "timm-vit-registers"])
def test_every_method_runs_on_special_tokens(name: str) -> None:
    entry = ZOO[name]
    model = entry.build().eval()
    x = torch.randn(1, 3, *entry.size)
    for method, cls in camkit.METHODS.items():
        if method == "cam":  # a ViT has no GAP + linear head over the layer's channels
            continue
        if method == "sess" and name == "timm-vit-registers":
            # SESS cuts square windows; a timm ViT built for 56 x 42 inputs asserts its size: one camkit line
            with pytest.raises(camkit.CamkitError, match=r"SESS feeds the model 42 x 42 windows .* 56 x 42 inputs"):
                cls(model, **quick_options(cls))(x, 1)
            continue
        maps = cls(model, **quick_options(cls))(x, 1)
        assert maps.shape == (1, *entry.size) and torch.isfinite(maps).all(), method
    assert no_hooks_left(model)


def test_clip_without_a_target_says_to_pass_a_similarity() -> None:
    entry = ZOO["hf-clip-similarity"]
    expected = r"returned embeddings \(image_embeds.*cosine similarity of output.image_embeds"
    with pytest.raises(camkit.CamkitError, match=expected):
        camkit.GradCAM(entry.build().eval())(torch.randn(1, 3, *entry.size))


def test_hugging_face_logits_give_predictions() -> None:
    """``.logits`` of a Hugging Face output is the class score: the default target is the top class."""
    entry = ZOO["hf-deit-distilled"]
    model = entry.build().eval()
    x = torch.randn(2, 3, *entry.size)
    result = camkit.GradCAM(model).explain(x)
    with torch.no_grad():
        top = model(x).logits.argmax(1)
    assert result.targets.tolist() == top.tolist() == result.predictions.tolist()
