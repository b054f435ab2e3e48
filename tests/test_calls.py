"""ModelCall: which inputs are per-image, rows/repeat follow them, Hugging Face models get pixel_values."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit
from camkit.calls import ModelCall, image_keyword_of


class Echo(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x, args, kwargs


def test_per_image_inputs_follow_rows_and_shared_ones_do_not() -> None:
    x = torch.arange(3.0).reshape(3, 1, 1, 1)
    per_image, texts, scalar = torch.arange(3), torch.zeros(3, 7), 2.5
    call = ModelCall.of(Echo(), x, {"tokens": per_image, "texts": camkit.Shared(texts), "scale": scalar})
    assert call.per_image_kwargs == frozenset({"tokens"}) and call.has_per_image_inputs
    index = torch.tensor([2, 2, 0])
    images, args, kwargs = call.rows(index).run(Echo())
    assert images.flatten().tolist() == [2.0, 2.0, 0.0] and args == ()
    assert kwargs["tokens"].tolist() == [2, 2, 0] and kwargs["texts"] is texts and kwargs["scale"] == scalar
    copies = call.repeat(2, images=torch.zeros(6, 1, 1, 1))
    assert copies.kwargs["tokens"].tolist() == [0, 1, 2, 0, 1, 2] and copies.x.shape[0] == 6


def test_tuple_inputs_are_positional_after_x_and_slices_work() -> None:
    x = torch.zeros(4, 1, 2, 2)
    call = ModelCall.of(Echo(), x, (torch.arange(4), torch.ones(5)))
    assert call.per_image_args == (True, False)
    _, args, _ = call.rows(slice(1, 3)).run(Echo())
    assert args[0].tolist() == [1, 2] and args[1].shape == (5,)


def test_a_calls_inputs_hand_its_rows_to_another_call_with_shared_ones_marked() -> None:
    """inputs() gives rows of a call back as inputs= (explain_detections' and the metrics' per-image calls):
    an input that was shared stays shared even where its first dimension equals the new batch."""
    x = torch.zeros(3, 1, 2, 2)
    call = ModelCall.of(Echo(), x, {"tokens": torch.arange(3), "texts": torch.zeros(2, 7), "scale": 2.5})
    one = call.rows(slice(1, 2))
    again = ModelCall.of(Echo(), one.x, one.inputs())
    assert again.kwargs["tokens"].tolist() == [1] and again.per_image_kwargs == frozenset({"tokens"})
    pair = call.rows(torch.tensor([0, 2]))  # two rows: the two texts must not be read as one per image
    again = ModelCall.of(Echo(), pair.x, pair.inputs())
    assert again.per_image_kwargs == frozenset({"tokens"}) and again.kwargs["texts"].shape == (2, 7)
    positional = ModelCall.of(Echo(), x, (torch.arange(3), torch.ones(2))).rows(torch.tensor([2, 0]))
    handed = ModelCall.of(Echo(), positional.x, positional.inputs())
    assert handed.args[0].tolist() == [2, 0] and handed.args[1].shape == (2,)
    assert handed.per_image_args == (True, False)
    assert ModelCall.of(Echo(), x).inputs() is None


def test_inputs_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(camkit.CamkitTypeError, match="dict of keyword arguments or a tuple"):
        ModelCall.of(Echo(), torch.zeros(1, 1, 2, 2), torch.zeros(1))


def test_hugging_face_models_get_pixel_values() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 50, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    model = transformers.CLIPModel(config).eval()
    assert image_keyword_of(model) == "pixel_values" and image_keyword_of(Echo()) is None
    with pytest.raises(camkit.CamkitTypeError, match="pixel_values"):
        ModelCall.of(model, torch.zeros(1, 3, 32, 32), {"pixel_values": torch.zeros(1, 3, 32, 32)})
