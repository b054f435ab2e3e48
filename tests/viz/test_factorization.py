"""Deep Feature Factorization's picture against pytorch-grad-cam's show_factorization_on_image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import show_factorization_on_image

import camkit
from camkit.viz.factorization import concept_colours, concept_labels, factorization_overlay

from ..helpers import tiny_cnn


def test_overlay_equals_pytorch_grad_cams_picture() -> None:
    generator = torch.Generator().manual_seed(0)
    image, concept_maps = torch.rand(1, 3, 24, 20, generator=generator), torch.rand(1, 4, 24, 20, generator=generator)
    ours = factorization_overlay(image, concept_maps, concept_colours(4), image_weight=0.3)
    # The peer's default colours call matplotlib's removed cm.get_cmap; pass the same gist_rainbow colours.
    colours = [np.array(rgb) for rgb in concept_colours(4).double().numpy()]
    theirs = show_factorization_on_image(image[0].permute(1, 2, 0).numpy(), concept_maps[0].numpy().copy(),
                                         colors=colours, image_weight=0.3)
    # The peer goes through uint8 HSV conversions: a few levels of rounding.
    assert np.abs((ours[0].permute(1, 2, 0).numpy() * 255) - theirs.astype(np.float64)).max() <= 4


def test_factorization_figure_draws_concepts_and_their_classes() -> None:
    model = tiny_cnn()
    result = camkit.DeepFeatureFactorization(model, "3", n_components=3, head="6").explain(torch.randn(2, 3, 12, 12))
    labels = concept_labels(result.concept_scores, ["a", "b", "c", "d", "e"], top_k=2)
    assert len(labels) == 3 and all(label.count("\n") == 1 for label in labels)
    figure = camkit.viz.factorization_figure(result, index=1, class_names=list("abcde"))
    assert len(figure.axes) == 2 and len(figure.legends[0].get_texts()) == 3
    assert figure._repr_png_()[:4] == b"\x89PNG"
    with pytest.raises(camkit.CamkitError, match="index"):
        camkit.viz.factorization_figure(result, index=2)
    with pytest.raises(camkit.CamkitError, match="DeepFeatureFactorization"):
        camkit.viz.factorization_figure(camkit.GradCAM(model, "3").explain(torch.randn(1, 3, 12, 12)))
