"""Smooth Grad-CAM++: Grad-CAM++ on the means of g, g^2, g^3 over noisy copies of each image."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture, capture
from ..errors import CamkitError
from ..layers import LayersSpec
from ..layouts import patch_size_of
from ..targets import NonFiniteScores, TargetSpec, check_finite_scores, non_finite_message, target_rows
from .gradcampp import GradCAMPlusPlus
from .registry import register


@register("smoothgradcam++", paper="Omeiza et al., Smooth Grad-CAM++, arXiv 2019 (arXiv:1908.01224)")
class SmoothGradCAMPlusPlus(GradCAMPlusPlus):
    """Eq. 19 on the gradient's powers averaged over noisy copies of each image.

    D1, D2, D3 are the means of g, g^2, g^3 over ``n_samples`` copies
    x + N(0, sigma^2), sigma = ``noise_level`` * (max(x_b) - min(x_b)); the
    activations come from the clean image; alpha = D2 / (2 D2 + sum A D3) and
    w_k = sum_ij alpha ReLU(D1). With ``noise_level=0`` this is Grad-CAM++.

    Defaults: ``noise_level=0.15`` is the middle of the 10-20 % of the input
    range that SmoothGrad (Smilkov et al.) found to sharpen maps without
    washing them out; ``n_samples=8`` keeps the cost at about eight Grad-CAM
    passes while averaging out most of the noise's variance. The copies run
    ``batch_size`` images per pass (default: 8, or one noisy copy of the
    input batch when it is larger). ``seed`` makes the noise reproducible and
    independent of ``batch_size``.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        n_samples: int = 8,
        noise_level: float = 0.15,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise CamkitError(f"n_samples must be a positive int, got {n_samples!r}.")
        if not noise_level >= 0:
            raise CamkitError(
                f"noise_level must be >= 0 (a fraction of each image's value range), got {noise_level!r}."
            )
        self.n_samples, self.noise_level, self.seed = n_samples, float(noise_level), seed

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        """The clean image's activations with the gradient moments of the noisy copies."""
        cleans = capture(
            self.model,
            self.layers,
            call,
            target,
            with_gradients=False,
            reshape=self.reshape,
            patch_size=patch_size_of(self.model),
        )
        if cleans[0].classes is None and not callable(target):
            raise CamkitError(
                "The model's output has no class scores to explain; pass target=callable(output) -> (B,) scores."
            )
        check_finite_scores(cleans[0].scores)
        # Every noisy copy explains the class chosen on the clean image.
        noisy_target = target if callable(target) and not isinstance(target, torch.Tensor) else cleans[0].classes
        return [
            replace(clean, gradients=moments[0], squared_gradients=moments[1], cubed_gradients=moments[2])
            for clean, moments in zip(cleans, self._gradient_moments(call, noisy_target))
        ]

    def _gradient_moments(self, call: ModelCall, target: TargetSpec) -> list[torch.Tensor]:
        """Per layer, the means over the noisy copies of g, g^2 and g^3, stacked as ``(3, B, K, h, w)``."""
        x, batch = call.x, call.batch
        sigma = self.noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        generator = torch.Generator(device=x.device)
        totals: list[torch.Tensor] | None = None
        rows = batch * self.n_samples  # copy-major: row r is copy r // B of image r % B
        per_pass = self.images_per_pass(batch)
        for start in range(0, rows, per_pass):
            row = torch.arange(start, min(start + per_pass, rows), device=x.device)
            copy_index, image_index = row // batch, row % batch
            noise = self._noise(x, generator, copy_index, image_index)
            noisy = x[image_index] + noise * sigma[image_index].reshape(-1, *([1] * (x.dim() - 1)))
            try:
                layers = capture(
                    self.model,
                    self.layers,
                    call.rows(image_index, noisy),
                    target_rows(target, image_index),
                    with_gradients=True,
                    reshape=self.reshape,
                    patch_size=patch_size_of(self.model),
                )
            except NonFiniteScores as error:  # name the batch's images, not the rows of the noisy copies
                images = sorted(set(image_index[error.rows].tolist()))
                raise CamkitError(non_finite_message(images) + " (on noisy copies)") from None
            if totals is None:
                totals = [
                    torch.zeros((3, batch, *layer.required_gradients().shape[1:]), dtype=torch.float64, device=x.device)
                    for layer in layers
                ]
            for total, layer in zip(totals, layers):
                gradients = layer.required_gradients()
                squared = gradients * gradients
                total.index_add_(1, image_index, torch.stack((gradients, squared, squared * gradients)).double())
        return [(total / self.n_samples).float() for total in totals or []]

    def _noise(
        self, x: torch.Tensor, generator: torch.Generator, copy_index: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        # One generator stream per copy, drawn for the whole batch: the noise an
        # image gets depends on the seed and its copy only, never on chunking.
        noise = torch.empty((len(copy_index), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for copy in torch.unique(copy_index).tolist():
            generator.manual_seed(self.seed * 1_000_003 + copy)
            in_copy = copy_index == copy
            noise[in_copy] = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)[
                image_index[in_copy]
            ]
        return noise
