"""Reading attention for one call: the probabilities and their gradients of torchvision, timm and Hugging Face
ViTs equal a float64 copy run with its attention written out, fused kernels on, and the model is left as found."""
from __future__ import annotations

import pytest
import torch

import camkit
from camkit.attention import AttentionBlock, attention_blocks, read_attention

from .helpers import (
    VIT_FAMILIES, class_scores, explicit_attention_forward, no_hooks_left, tiny_cnn, tiny_transformer,
)


def _fused_state(model: torch.nn.Module) -> tuple:
    flags = tuple(getattr(module, "fused_attn", None) for module in model.modules())
    config = getattr(model, "config", None)
    return flags, getattr(config, "_attn_implementation", None), torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_probabilities_and_gradients_equal_the_written_out_attention(family: str) -> None:
    model = tiny_transformer(family)
    model.train()  # a model being fine-tuned: read in eval mode, its flags put back
    model.requires_grad_(False)  # frozen: torchvision would take its fused fast path
    before = _fused_state(model)
    assert before[0].count(True) == 3 or before[1] == "sdpa" or family == "torchvision"  # fused paths are on
    x, classes = torch.randn(2, 3, 32, 32), [1, 4]
    expected_output, expected = explicit_attention_forward(model.eval(), family, x)
    class_scores(expected_output, classes).sum().backward()
    model.train()
    blocks = attention_blocks(model)
    assert len(blocks) == 3
    read = read_attention(model, blocks, x, classes, with_gradients=True)
    assert read.prefix_tokens == 1 and read.grid == (4, 4)
    for ours, theirs in zip(read.probabilities, expected):
        torch.testing.assert_close(ours.double(), theirs.detach(), atol=1e-6, rtol=0)
    for ours, theirs in zip(read.gradients, expected):
        torch.testing.assert_close(ours.double(), theirs.grad, atol=1e-5 * theirs.grad.abs().max().item(), rtol=0)
    assert _fused_state(model) == before and no_hooks_left(model)
    assert all(module.training for module in model.modules())
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in model.parameters())
    gradient_free = read_attention(model, blocks, x, None, with_gradients=False)
    torch.testing.assert_close(gradient_free.probabilities[0], read.probabilities[0].detach())
    assert gradient_free.gradients is None


def test_timm_non_fused_path_and_inference_mode_read_the_same() -> None:
    model = tiny_transformer("timm")
    x = torch.randn(2, 3, 32, 32)
    fused = read_attention(model, attention_blocks(model), x, None, with_gradients=True)
    for block in model.blocks:
        block.attn.fused_attn = False
    with torch.inference_mode():
        explicit = read_attention(model, attention_blocks(model), x, None, with_gradients=True)
    for ours, theirs in zip(fused.gradients, explicit.gradients):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert all(not block.attn.fused_attn for block in model.blocks)


def test_a_forward_that_fails_leaves_no_mode_and_no_hooks() -> None:
    model = tiny_transformer("timm")

    def broken(_module, _inputs, _output):
        raise RuntimeError("boom")

    handle = model.blocks[1].mlp.register_forward_hook(broken)
    with pytest.raises(RuntimeError, match="boom"):
        read_attention(model, attention_blocks(model), torch.randn(1, 3, 32, 32), None, with_gradients=True)
    handle.remove()
    assert no_hooks_left(model) and not torch.overrides._is_torch_function_mode_enabled()
    assert torch.is_grad_enabled()


def test_blocks_are_chosen_by_any_module_at_or_inside_them() -> None:
    model = tiny_transformer("torchvision")
    assert [block.name for block in attention_blocks(model)] == [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    within = [model.encoder.layers.encoder_layer_2.ln_1, model.encoder.layers.encoder_layer_0]
    assert [block.name for block in attention_blocks(model, within)] == ["encoder.layers.encoder_layer_0",
                                                                         "encoder.layers.encoder_layer_2"]
    assert camkit.AttentionRollout(model, "encoder.layers.encoder_layer_1.self_attention").target_layer_name == (
        "encoder.layers.encoder_layer_1")
    assert camkit.AttentionRollout(model).target_layer_name == (
        "encoder.layers.encoder_layer_0..encoder.layers.encoder_layer_2")


def test_a_model_without_attention_is_refused_in_one_clear_line() -> None:
    cnn = tiny_cnn()
    for cls in (camkit.AttentionRollout, camkit.TransformerAttribution, camkit.LeGrad):
        assert not cls.applies_to(cnn) and cls.applies_to(tiny_transformer("timm"))
        with pytest.raises(camkit.CamkitError, match="reads the attention of a Vision Transformer"):
            cls(cnn)
    assert camkit.GradCAM.applies_to(cnn)


@pytest.mark.parametrize(("options", "prefix"), [({"name": "deit_tiny_distilled_patch16_224"}, 2),
                                                 ({"class_token": False, "global_pool": "avg"}, 0),
                                                 ({"reg_tokens": 4, "no_embed_class": True}, 5)])
def test_special_tokens_of_timm_variants_are_dropped(options: dict, prefix: int) -> None:
    model = tiny_transformer("timm", img_size=(32, 40), **options)
    read = read_attention(model, attention_blocks(model), torch.randn(2, 3, 32, 40), [0, 1], with_gradients=True)
    assert read.prefix_tokens == prefix and read.grid == (4, 5)
    for cls in (camkit.AttentionRollout, camkit.TransformerAttribution, camkit.LeGrad):
        explanation = cls(model).explain(torch.randn(2, 3, 32, 40), [0, 1])
        assert explanation.maps.shape == (2, 32, 40) and explanation.layer_maps.shape == (2, 4, 5)
        assert torch.isfinite(explanation.maps).all()


def test_windowed_attention_is_refused_in_one_line() -> None:
    import torchvision

    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                              window_size=[4, 4], num_classes=5).eval()
    assert not camkit.AttentionRollout.applies_to(swin)
    with pytest.raises(camkit.CamkitError, match="found no attention block"):
        camkit.AttentionRollout(swin)
    # named by hand, a windowed block is refused when its attention shows a row per window
    blocks = [AttentionBlock(f"features.1.{index}", swin.features[1][index], swin.features[1][index].attn)
              for index in range(2)]
    with pytest.raises(camkit.CamkitError, match="windowed or pooled attention"):
        read_attention(swin, blocks, torch.randn(2, 3, 64, 64), None, with_gradients=False)
    assert no_hooks_left(swin) and not torch.overrides._is_torch_function_mode_enabled()


def _hf(kind: str) -> torch.nn.Module:
    import transformers

    small = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "num_labels": 5}
    config, model = {"deit": (transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher),
                     "dinov2": (transformers.Dinov2Config, transformers.Dinov2ForImageClassification),
                     "beit": (transformers.BeitConfig, transformers.BeitForImageClassification)}[kind]
    return model(config(**small))


@pytest.mark.parametrize("name", ["hf:deit", "hf:dinov2", "hf:beit", "beit_base_patch16_224", "eva02_tiny_patch14_224",
                                  "vit_base_patch16_siglip_224", "deit3_small_patch16_224"])
def test_other_transformers_run_every_attention_method(name: str) -> None:
    # Relative position biases (BEiT), rotary embeddings (EVA-02), an attention-pooling head (SigLIP), DeiT's
    # two heads and DINOv2's class-and-mean head: read through the same capture, default score projection.
    if name.startswith("hf:"):
        model = _hf(name[3:]).eval()
    else:
        import timm

        model = timm.create_model(name, pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    for cls in (camkit.AttentionRollout, camkit.TransformerAttribution, camkit.LeGrad):
        maps = cls(model)(x, [0, 3])
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.max() == 1
    assert no_hooks_left(model) and all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_half_precision_and_autocast_give_float32_maps_close_to_float32(family: str) -> None:
    import copy

    model = tiny_transformer(family)
    x = torch.randn(2, 3, 32, 32)
    for cls in (camkit.AttentionRollout, camkit.TransformerAttribution, camkit.LeGrad):
        reference = cls(model)(x, [0, 1])
        for dtype in (torch.float16, torch.bfloat16):
            maps = cls(copy.deepcopy(model).to(dtype))(x.to(dtype), [0, 1])
            assert maps.dtype == torch.float32 and (maps - reference).abs().mean() < 1e-2, (cls.__name__, dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = cls(model)(x, [0, 1])
        assert maps.dtype == torch.float32 and (maps - reference).abs().mean() < 1e-2, cls.__name__


def test_the_command_line_runs_the_attention_methods_and_all_includes_them(tmp_path) -> None:
    import csv

    from camkit.cli import main
    from camkit.explainers import methods_for

    from .helpers import ROOT, user_code_on_path

    assert methods_for(tiny_transformer("timm")) == list(camkit.METHODS)
    assert set(camkit.METHODS) - set(methods_for(tiny_cnn())) == {"attentionrollout", "transformerattribution",
                                                                  "legrad"}
    out = tmp_path / "out"
    sample = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]
    methods = "attentionrollout,transformerattribution,legrad"
    with user_code_on_path():
        assert main(["overlay", str(sample), "-o", str(out), "--model", "factory_model:tiny_vit", "--method", methods,
                     "--workers", "0", "--quiet"]) == 0
    with open(out / "manifest.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["method"] for row in rows) == sorted(methods.split(",")) and {row["status"] for row in rows} == {"ok"}
