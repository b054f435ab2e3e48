"""Finding and automatically choosing target layers."""
from __future__ import annotations


import pytest
import torch
import torchvision

import camkit


def test_automatic_layer_choice_is_reported(caplog) -> None:
    import logging

    cases = {
        torchvision.models.resnet18: "layer4",
        torchvision.models.vgg11: "features",
        torchvision.models.densenet121: "features",
        torchvision.models.mobilenet_v3_small: "features",
    }
    for factory, expected in cases.items():
        cam = camkit.GradCAM(factory(num_classes=10))
        with caplog.at_level(logging.INFO, logger="camkit"):
            cam(torch.randn(1, 3, 64, 64))
        assert cam.target_layer_name == expected
        assert repr(expected) in caplog.text


class _TokenMixer(torch.nn.Module):
    """A conv stem, then a transformer-like body on 3 mixed tokens: nothing camkit can lay on a grid."""

    def __init__(self, special_token: bool = False, norms: bool = True) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.mix = torch.nn.Linear(64, 3)  # 8x8 patches mixed into 3 tokens
        self.blocks = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.LayerNorm(8) if norms else torch.nn.Identity(),
                                                                torch.nn.Linear(8, 8)) for _ in range(2)))
        self.head = torch.nn.Linear(8, 5)
        if special_token:
            self.cls_token = torch.nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2)
        tokens = self.mix(tokens).transpose(1, 2) if not hasattr(self, "cls_token") else tokens.transpose(1, 2)
        if hasattr(self, "cls_token"):
            tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        return self.head(self.blocks(tokens)[:, 0])


def test_tokens_that_fit_no_grid_are_refused_rather_than_explaining_the_stem() -> None:
    with pytest.raises(camkit.CamkitError, match=r"last grid 'stem'.*cannot lay 3 tokens.*target_layer=.*reshape="):
        camkit.GradCAM(_TokenMixer())(torch.randn(1, 3, 32, 32))
    # Named by the user with a reshape, the same layer works.
    maps = camkit.GradCAM(_TokenMixer(), "blocks.1.0", reshape=lambda t: t.transpose(1, 2)[..., None])(
        torch.randn(1, 3, 32, 32))
    assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()


def test_a_vit_without_norms_in_its_blocks_asks_for_a_layer() -> None:
    with pytest.raises(camkit.CamkitError, match=r"1 special token.*no norm.*target_layer="):
        camkit.GradCAM(_TokenMixer(special_token=True, norms=False))(torch.randn(1, 3, 32, 32))
    cam = camkit.GradCAM(_TokenMixer(special_token=True))
    cam(torch.randn(1, 3, 32, 32))
    assert cam.target_layer_name == "blocks.1.0"


def test_a_module_run_twice_is_not_chosen() -> None:
    """A shared ReLU runs after both convolutions: it has no one map, so the last convolution is chosen."""

    class SharedReLU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.relu, self.head = torch.nn.ReLU(), torch.nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))

    cam = camkit.GradCAM(SharedReLU())
    cam(torch.randn(1, 3, 16, 16))
    assert cam.target_layer_name == "conv2"


def test_any_sequence_of_layers_is_accepted_as_a_list_is() -> None:
    # target_layer is typed Sequence[str | nn.Module]; a deque or a range-like view of names was refused as
    # "not a dotted module name" while a list worked (mypy found the mismatch).
    from collections import deque

    from camkit.layers import find_layers

    model = torchvision.models.resnet18(num_classes=4)
    as_list = find_layers(model, ["layer3", model.layer4])
    assert find_layers(model, deque(["layer3", model.layer4])) == as_list
    assert [name for name, _ in as_list] == ["layer3", "layer4"]
    with pytest.raises(camkit.CamkitError, match="dotted module name"):
        find_layers(model, b"layer4")
