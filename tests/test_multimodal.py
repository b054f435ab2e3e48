"""Multi-input Hugging Face models through inputs=: CLIP with several texts, ViLT VQA, a ViT + GPT-2 captioner.

Tiny models built from configs (no downloads). Each method with ``inputs=``
must equal the same method on a wrapper that closes over the extra inputs;
where a method makes copies the wrapper holds one image's inputs and the
comparison runs image by image.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit
from tests.helpers import no_hooks_left

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


class Closed(nn.Module):
    """``model(pixel_values=x, **inputs)`` with the inputs fixed; one image's per-image inputs expand to its copies."""

    def __init__(self, model: nn.Module, per_image: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model, self.per_image, self.shared = model, per_image, shared

    def forward(self, x: torch.Tensor):
        rows = {name: value if value.shape[0] == x.shape[0] else value.expand(x.shape[0], *value.shape[1:])
                for name, value in self.per_image.items()}
        return self.model(pixel_values=x, **rows, **self.shared)


@pytest.fixture(scope="module")
def clip() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=dict(SMALL, vocab_size=50, max_position_embeddings=16),
                                     vision_config=dict(SMALL, image_size=32, patch_size=8), projection_dim=8)
    return transformers.CLIPModel(config).eval()


@pytest.fixture(scope="module")
def vilt() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViltConfig(**SMALL, vocab_size=50, max_position_embeddings=16, image_size=32, patch_size=8,
                                     num_labels=4, max_image_length=-1)
    # float64: Ablation-CAM's weights are relative score drops of ~1e-4, float32 noise would show in them.
    return transformers.ViltForQuestionAnswering(config).double().eval()


@pytest.fixture(scope="module")
def captioner() -> nn.Module:
    torch.manual_seed(0)
    encoder = transformers.ViTConfig(**SMALL, image_size=32, patch_size=8)
    decoder = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16,
                                      add_cross_attention=True, is_decoder=True)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    return transformers.VisionEncoderDecoderModel(config).eval()


CLIP_LAYER = "vision_model.encoder.layers.0.layer_norm1"


@pytest.mark.parametrize(("method", "options"), [("gradcam", {}), ("gradcam", {"augment": True}),
                                                 ("scorecam", {"top_channels": 4})])
def test_clip_one_forward_with_several_texts_equals_the_wrapper(clip: nn.Module, method: str, options: dict) -> None:
    torch.manual_seed(1)
    x, texts = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (3, 6))  # 3 prompts, logits_per_image (2, 3)
    ours = camkit.create(method, clip, CLIP_LAYER, **options).explain(x, [0, 2], inputs={"input_ids": texts})
    theirs = camkit.create(method, Closed(clip, {}, {"input_ids": texts}), "model." + CLIP_LAYER, **options).explain(
        x, [0, 2])
    torch.testing.assert_close(ours.maps, theirs.maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.scores, theirs.scores, equal_nan=True)
    assert ours.predictions.shape == (2,) and no_hooks_left(clip)


VILT_LAYER = "vilt.embeddings.patch_embeddings.projection"


@pytest.mark.parametrize(("method", "options", "by_image"), [("gradcam", {}, False),
                                                            ("gradcam", {"augment": True}, True),
                                                            ("ablationcam", {"top_channels": 4, "path": "full"}, True)])
def test_vilt_question_answering_equals_the_wrapper(vilt: nn.Module, method: str, options: dict,
                                                    by_image: bool) -> None:
    torch.manual_seed(2)
    x, question = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 50, (2, 5))  # a question per image
    answers = [1, 3]  # VQA needs no new target: the answer is a class
    ours = camkit.create(method, vilt, VILT_LAYER, **options).explain(x, answers, inputs={"input_ids": question})
    rows = [slice(0, 1), slice(1, 2)] if by_image else [slice(0, 2)]
    for row in rows:
        wrapper = Closed(vilt, {"input_ids": question[row]}, {})
        theirs = camkit.create(method, wrapper, "model." + VILT_LAYER, **options).explain(x[row], answers[row])
        torch.testing.assert_close(ours.maps[row], theirs.maps, atol=1e-5, rtol=1e-4)
    assert no_hooks_left(vilt)


CAPTION_LAYER = "encoder.encoder.layer.0.layernorm_before"


@pytest.mark.parametrize("positions", [None, 2])  # the whole caption, one word
@pytest.mark.parametrize(("method", "options", "by_image"), [("gradcam", {}, False),
                                                            ("gradcam++", {}, False),
                                                            ("scorecam", {"top_channels": 4}, True)])
def test_captioner_with_caption_target_equals_the_wrapper(captioner: nn.Module, positions, method: str,
                                                          options: dict, by_image: bool) -> None:
    torch.manual_seed(3)
    x, caption = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 5))
    start = torch.zeros(2, 1, dtype=torch.long)
    decoder_input_ids = torch.cat((start, caption[:, :-1]), dim=1)  # teacher forcing: logits[:, t] predicts caption[:, t]
    layer = _layer_name(captioner)
    ours = camkit.create(method, captioner, layer, **options).explain(
        x, camkit.CaptionTarget(caption, positions), inputs={"decoder_input_ids": decoder_input_ids})
    for row in ([slice(0, 1), slice(1, 2)] if by_image else [slice(0, 2)]):
        wrapper = Closed(captioner, {"decoder_input_ids": decoder_input_ids[row]}, {})
        theirs = camkit.create(method, wrapper, "model." + layer, **options).explain(
            x[row], camkit.CaptionTarget(caption[row], positions))
        torch.testing.assert_close(ours.maps[row], theirs.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scores[row], theirs.scores, equal_nan=True)
    assert no_hooks_left(captioner)


def test_caption_target_is_the_teacher_forced_log_probability(captioner: nn.Module) -> None:
    torch.manual_seed(4)
    x, caption = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 5))
    decoder_input_ids = torch.cat((torch.zeros(2, 1, dtype=torch.long), caption[:, :-1]), dim=1)
    with torch.no_grad():
        logits = captioner(pixel_values=x, decoder_input_ids=decoder_input_ids).logits.double()
    log_probabilities = logits.log_softmax(-1).gather(2, caption[..., None])[..., 0]
    explanation = camkit.GradCAM(captioner, _layer_name(captioner)).explain(
        x, camkit.CaptionTarget(caption), inputs={"decoder_input_ids": decoder_input_ids})
    torch.testing.assert_close(explanation.scores.double(), log_probabilities.sum(1), atol=1e-5, rtol=1e-5)
    one_word = camkit.CaptionTarget(caption, positions=[-1])(
        captioner(pixel_values=x, decoder_input_ids=decoder_input_ids))
    torch.testing.assert_close(one_word.double(), log_probabilities[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(camkit.CamkitError, match="aligned with its tokens"):
        camkit.CaptionTarget(caption[:, :3])(captioner(pixel_values=x, decoder_input_ids=decoder_input_ids))


def _layer_name(captioner: nn.Module) -> str:
    # The ViT encoder's module names moved between transformers versions (encoder.layer / encoder.layers).
    names = [name for name, _ in captioner.named_modules() if name.endswith("layernorm_before")]
    return names[0] if names else CAPTION_LAYER
