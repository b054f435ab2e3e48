"""ShapleyCAM: Grad-CAM's weights from the gradient corrected by the Hessian-vector product, w_k = mean_ij (g - H A / 2)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..calls import ModelCall
from ..capture import Capture, check_finite, explained_scores, hooked_forward, layer_gradients, to_captures
from ..layouts import patch_size_of, prefix_tokens_of
from ..modes import explaining
from ..ops.weighting import mean_gradient_weights
from ..targets import TargetSpec
from .base import ChannelWeightedExplainer
from .registry import register


@register(
    "shapleycam",
    paper="Cai et al., CAMs as Shapley Value-based Explainers, The Visual Computer 2025 (arXiv:2501.06261)",
)
class ShapleyCAM(ChannelWeightedExplainer):
    """A second-order Taylor estimate of each channel's Shapley value: w_k = mean_ij (g - (H A) / 2)_kij.

    H is the Hessian of the score with respect to the layer's activations,
    H A one Hessian-vector product (a second backward through the graph of
    the first, which starts at the layer, not at the input). The capture's
    ``gradients`` hold g - H A / 2. Where the score is piecewise linear in the
    layer (ReLU networks explaining a raw logit) H A = 0 and the map is
    Grad-CAM's; it differs through softmax targets and smooth activations.
    Attention runs on PyTorch's math kernel for the call (fused kernels have
    no second derivative).
    """

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        # Fused attention kernels have no second derivative; the math kernel computes the same attention.
        with explaining(self.model), sdpa_kernel([SDPBackend.MATH]):
            output, tensors = hooked_forward(self.model, self.layers, call, True)
            check_finite(self.layers, tensors, "activations")
            with torch.enable_grad():
                scores, classes = explained_scores(output, target, call.batch, required=True)
                gradients = layer_gradients(scores, tensors, self.layers, create_graph=True)
                corrected = [
                    g - 0.5 * _hessian_product(g, a, last=i == len(tensors) - 1)
                    for i, (g, a) in enumerate(zip(gradients, tensors))
                ]
            check_finite(self.layers, corrected, "gradient")
        return to_captures(
            tensors,
            [g.detach() for g in corrected],
            output,
            scores,
            classes,
            tuple(call.x.shape[2:]),
            self.reshape,
            patch_size_of(self.model),
            prefix_tokens_of(self.model),
        )

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        return mean_gradient_weights(captured.required_gradients())


def _hessian_product(gradients: torch.Tensor, activations: torch.Tensor, *, last: bool) -> torch.Tensor:
    """H A for one layer: d(g . A)/dA with A held fixed; zeros where g does not depend on A (a linear score)."""
    if not gradients.requires_grad:
        return torch.zeros_like(gradients)
    (product,) = torch.autograd.grad(
        gradients, activations, grad_outputs=activations.detach(), retain_graph=not last, allow_unused=True
    )
    return product if product is not None else torch.zeros_like(gradients)
