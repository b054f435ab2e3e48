"""Layouts: counting a model's special tokens and laying token outputs on their grid."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from camkit.layouts import prefix_tokens_of, to_grid, token_grid, token_layout

from .helpers import tiny_cnn, tiny_vit


class _TokenModel(nn.Module):
    """A ViT-like embedding with learned special tokens named as a library names them."""

    def __init__(self, **tokens: tuple[int, ...]) -> None:
        super().__init__()
        for name, shape in tokens.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))


def test_special_tokens_are_counted_from_the_model() -> None:
    assert prefix_tokens_of(tiny_vit()) == 1  # torchvision: class_token (1, 1, D)
    assert prefix_tokens_of(tiny_cnn()) == 0
    # Hugging Face DeiT and DINOv2 with registers, CLIP's (D,) class embedding.
    assert prefix_tokens_of(nn.Sequential(_TokenModel(cls_token=(1, 1, 8), distillation_token=(1, 1, 8)))) == 2
    assert prefix_tokens_of(_TokenModel(cls_token=(1, 1, 8), register_tokens=(1, 4, 8), mask_token=(1, 8))) == 5
    assert prefix_tokens_of(_TokenModel(class_embedding=(8,))) == 1
    # A second ViT inside the model (a teacher) has its own tokens: they are not added up.
    assert prefix_tokens_of(nn.ModuleDict({"student": _TokenModel(cls_token=(1, 1, 8)),
                                           "teacher": _TokenModel(cls_token=(1, 1, 8))})) == 1
    # timm says it itself, registers included.
    declared = _TokenModel(cls_token=(1, 1, 8))
    declared.num_prefix_tokens = 5
    assert prefix_tokens_of(declared) == 5


def test_hierarchical_grids_shrink_with_the_input_aspect() -> None:
    # LeViT on 224x160: 16-pixel patches, then every other row and column, twice (rounded up).
    assert token_layout(14 * 10, (224, 160), (16, 16), 0) == (0, 14, 10)
    assert token_layout(7 * 5, (224, 160), (16, 16), 0) == (0, 7, 5)
    assert token_layout(4 * 3, (224, 160), (16, 16), 0) == (0, 4, 3)
    # Swin on 224x224 at strides 4 to 32, no special tokens.
    assert [token_layout(side * side, (224, 224), (4, 4), 0) for side in (56, 28, 14, 7)] == [
        (0, 56, 56), (0, 28, 28), (0, 14, 14), (0, 7, 7)]


def test_the_models_special_token_count_decides_between_grids() -> None:
    # 20 tokens of a 64x48 image: 5x4 patches (stride ~12), or 8 special tokens and 4x3 (stride 16).
    assert token_layout(20, (64, 48), None, 0) == (0, 5, 4)
    assert token_layout(20, (64, 48), None, 8) == (8, 4, 3)
    # A patch embedding's output comes before the special tokens are added: none there.
    assert token_layout(16, (64, 64), (16, 16), 1) == (0, 4, 4)
    assert token_layout(17, (64, 64), (16, 16), 1) == (1, 4, 4)


def test_tokens_that_fit_no_grid_are_refused() -> None:
    # A square image never gives a 1x2 grid (both sides see the same layers).
    assert token_layout(3, (32, 32), None, 1) is None
    with pytest.raises(ValueError, match=r"3 tokens.*2 special tokens.*reshape="):
        token_grid(3, (64, 64), None, 2)


def test_to_grid_drops_the_special_tokens_and_keeps_row_major_order() -> None:
    batch, special, (grid_h, grid_w), width = 2, 5, (4, 3), 6
    patches = torch.randn(batch, grid_h, grid_w, width)
    tokens = torch.cat((torch.randn(batch, special, width), patches.flatten(1, 2)), dim=1)
    laid = to_grid(tokens, (56, 42), (14, 14), special)
    torch.testing.assert_close(laid, patches.permute(0, 3, 1, 2))
