"""Small, randomly initialised models from the zoos users bring: Hugging Face transformers and timm.

Nothing is downloaded: Hugging Face models are built from a config, timm ones with
``pretrained=False``. Each entry says which layer the automatic choice must give and
how that layer's tokens lie (written from the architecture, not from camkit's rules).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn


@dataclass(frozen=True)
class ZooModel:
    """One architecture as a user would load it, and what camkit should make of it."""

    build: Callable[[], nn.Module]
    size: tuple[int, int]  # the input's (H, W)
    layer: Callable[[nn.Module], str]  # the automatic choice, by the rule DESIGN.md states
    why: str
    special_tokens: int | None  # tokens before the patch grid at that layer; None: a (B, C, h, w) map
    grid: tuple[int, int]  # that layer's (h, w)
    target: Callable[[], Any] | None = None  # makes the score for models without class logits


def last_named(suffix: str) -> Callable[[nn.Module], str]:
    """The last module whose dotted name ends with ``suffix`` (module naming differs across transformers versions)."""

    def find(model: nn.Module) -> str:
        names = [name for name, _ in model.named_modules() if name.endswith(suffix)]
        assert names, f"no module named *{suffix} in {type(model).__name__}"
        return names[-1]

    return find


def fixed(name: str) -> Callable[[nn.Module], str]:
    return lambda _model: name


def _hf(cls_name: str, config_name: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        transformers = pytest.importorskip("transformers")
        return getattr(transformers, cls_name)(getattr(transformers, config_name)(**config))

    return build


def _timm(name: str, **options: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=5, **options)

    return build


def _levit(**options: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = _timm("levit_128s", **options)()
        # timm's LeViT init (weights of std 0.02, zero attention biases) shrinks a random model's tokens
        # until its attention is uniform and the downsampling attention gives every token the same value:
        # every map would be empty. He-initialised weights and random position biases keep the tokens
        # apart, as a trained model's are.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("attention_biases"):
                    parameter.normal_()
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.kaiming_normal_(module.weight)
        return model

    return build


# Two blocks of width 32 on 32x32 images in 8x8 patches: a 4x4 grid.
_HF_VIT = dict(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
               intermediate_size=64)
PROJECTION = 16


def clip_similarity() -> Callable[[Any], torch.Tensor]:
    """CLIP's score for a fixed text: cosine similarity of the image embedding with a reference embedding."""
    reference = torch.randn(PROJECTION, generator=torch.Generator().manual_seed(7))
    return lambda output: torch.nn.functional.cosine_similarity(output.image_embeds, reference[None], dim=1)


VIT_RULE = ("a ViT's class token carries the prediction: the last block's first norm, where attention still mixes "
            "the patches into it")
STAGE_RULE = "no special tokens: the last stage's output, as for a CNN"

ZOO: dict[str, ZooModel] = {
    "hf-vit": ZooModel(_hf("ViTForImageClassification", "ViTConfig", num_labels=5, **_HF_VIT), (32, 32),
                       last_named("layernorm_before"), VIT_RULE, 1, (4, 4)),
    "hf-deit-distilled": ZooModel(
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", num_labels=5, **_HF_VIT), (32, 32),
        last_named("layernorm_before"), VIT_RULE + " (class and distillation tokens dropped)", 2, (4, 4)),
    "hf-swin": ZooModel(
        _hf("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
            num_heads=[1, 2], window_size=4, num_labels=5), (32, 32),
        last_named("encoder.layers.1"), STAGE_RULE + " (8x8 patches merged to 4x4)", 0, (4, 4)),
    "hf-convnext": ZooModel(
        _hf("ConvNextForImageClassification", "ConvNextConfig", num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
            num_labels=5), (32, 32),
        last_named("encoder.stages.1"), "a CNN: its last stage", None, (4, 4)),
    "hf-clip-similarity": ZooModel(
        _hf("CLIPVisionModelWithProjection", "CLIPVisionConfig", projection_dim=PROJECTION, **_HF_VIT), (32, 32),
        last_named("layer_norm1"), VIT_RULE, 1, (4, 4), target=clip_similarity),
    "timm-vit": ZooModel(_timm("vit_tiny_patch16_224", img_size=(48, 64), depth=2), (48, 64),
                         fixed("blocks.1.norm1"), VIT_RULE, 1, (3, 4)),
    "timm-deit-distilled": ZooModel(_timm("deit_tiny_distilled_patch16_224", img_size=(64, 48), depth=2), (64, 48),
                                    fixed("blocks.1.norm1"), VIT_RULE + " (class and distillation tokens dropped)",
                                    2, (4, 3)),
    "timm-vit-registers": ZooModel(_timm("vit_small_patch14_reg4_dinov2", img_size=(56, 42), depth=2), (56, 42),
                                   fixed("blocks.1.norm1"), VIT_RULE + " (class and 4 register tokens dropped)",
                                   5, (4, 3)),
    # 160x96 in 16-pixel patches is 10x6; each later stage keeps every other row and column: 5x3, then 3x2.
    "timm-levit": ZooModel(_levit(img_size=(160, 96)), (160, 96), fixed("stages"),
                           STAGE_RULE + " (the last stage's last block returns this very tensor), not the stem",
                           0, (3, 2)),
    "timm-convnext": ZooModel(_timm("convnext_atto"), (64, 96), fixed("stages"), "a CNN: its last stage", None,
                              (2, 3)),
    # bn2 is timm's BatchNormAct2d: the head's norm and activation, the last map before pooling.
    "timm-efficientnet": ZooModel(_timm("efficientnet_b0"), (64, 96), fixed("bn2"),
                                  "a CNN: the head conv's norm and activation (bn2, not its child bn2.act)", None,
                                  (2, 3)),
}


def by_hand(tokens_or_map: torch.Tensor, entry: ZooModel) -> torch.Tensor:
    """A layer's output as (B, K, h, w), laid out from what the architecture is, not by camkit."""
    if entry.special_tokens is None:
        return tokens_or_map
    patches = tokens_or_map[:, entry.special_tokens:, :]
    return patches.reshape(patches.shape[0], *entry.grid, patches.shape[2]).permute(0, 3, 1, 2)
