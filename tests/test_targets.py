"""`target` to scores: classes, sequences, tensors, callables, structured outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import camkit


def test_targets_none_int_sequence_tensor() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    cam = camkit.GradCAM(model)
    top = model(x).argmax(1)
    torch.testing.assert_close(cam(x), cam(x, top))
    torch.testing.assert_close(cam(x, 4), cam(x, [4, 4, 4]))
    torch.testing.assert_close(cam(x, torch.tensor([1, 2, 3])), cam(x, (1, 2, 3)))
    result = cam.explain(x, [1, 2, 3])
    assert result.targets.tolist() == [1, 2, 3] and torch.equal(result.predictions, top)
    assert result.layer == "layer4" and result.layer_maps.shape == (3, 2, 2)


def test_callable_target_and_structured_outputs() -> None:
    base = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = camkit.GradCAM(base, "layer4")(x, [3, 5])

    class Wrapped(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.net, self.kind = base, kind

        def forward(self, x):
            logits = self.net(x)
            if self.kind == "tuple":
                return logits, logits.sum()
            if self.kind == "dict":
                return {"aux": logits.sum(), "logits": logits}
            return type("Output", (), {"logits": logits})()

    for kind in ("tuple", "dict", "object"):
        torch.testing.assert_close(camkit.GradCAM(Wrapped(kind), "net.layer4")(x, [3, 5]), expected)
    by_callable = camkit.GradCAM(base, "layer4")(x, lambda out: out[:, 3] * 0 + out[torch.arange(2), [3, 5]])
    torch.testing.assert_close(by_callable, expected)


@pytest.mark.parametrize(
    "target",
    [True, [False, 0], (0, True), torch.tensor([True, False]), np.array([True, False]), [np.bool_(True), 1]],
)
def test_bools_are_not_class_indices(target) -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(camkit.CamkitTypeError, match="bool"):
        camkit.GradCAM(model)(x, target)
    maps = torch.rand(2, 32, 32)
    with pytest.raises(camkit.CamkitTypeError, match="bool"):
        camkit.metrics.deletion(model, x, maps, target, steps=2)
    with pytest.raises(camkit.CamkitTypeError, match="bool"):
        camkit.metrics.average_drop(model, x, maps, target)


def test_numpy_integers_and_int_tensors_are_class_indices() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    cam = camkit.GradCAM(model)
    expected = cam(x, [1, 3])
    torch.testing.assert_close(cam(x, np.array([1, 3])), expected)
    torch.testing.assert_close(cam(x, [np.int64(1), np.int32(3)]), expected)
    torch.testing.assert_close(cam(x, torch.tensor([1, 3], dtype=torch.int32)), expected)


def test_zero_shot_and_embedding_outputs() -> None:
    """CLIP's ``logits_per_image`` are class scores (one per text); embeddings alone need a callable target."""
    from camkit.targets import logits_of

    logits = torch.randn(2, 4)
    clip_output = {"logits_per_image": logits, "logits_per_text": logits.T, "image_embeds": torch.randn(2, 8)}
    assert logits_of(clip_output) is logits
    assert logits_of(type("Output", (), {"logits_per_image": logits})()) is logits
    with pytest.raises(camkit.CamkitTypeError, match=r"embeddings \(image_embeds\).*target=callable"):
        logits_of({"image_embeds": torch.randn(2, 8)})


def test_a_negated_score_gives_the_counterfactual_map() -> None:
    """``target=lambda out: -out[:, c]``: Grad-CAM of the evidence against class c, ReLU(-sum_k w_k A_k)."""
    from .helpers import reference_capture, reference_finish, tiny_strided_cnn

    model = tiny_strided_cnn()
    x = torch.randn(2, 3, 16, 12)
    activations, gradients = reference_capture(model, model[3], x, [2, 2])
    against = reference_finish(-(gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1), (16, 12))
    np.testing.assert_allclose(camkit.GradCAM(model, "3")(x, lambda out: -out[:, 2]).numpy(), against, atol=1e-5)
