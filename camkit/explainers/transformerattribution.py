"""Chefer et al.'s generic attention relevance: R += mean_h (grad A * A)^+ R, read at the class token."""

from __future__ import annotations

import torch

from ..attention import AttentionRead, query_weights
from ..targets import TargetSpec
from .attentionbase import AttentionExplainer, chained_row
from .registry import register


@register(
    "transformerattribution",
    paper="Chefer, Gur & Wolf, Generic Attention-model Explainability for "
    "Interpreting Bi-Modal and Encoder-Decoder Transformers, ICCV 2021 "
    "(arXiv:2103.15679)",
)
class TransformerAttribution(AttentionExplainer):
    """The class token's row of R = (I + Ā_L) ... (I + Ā_1), Ā = mean over heads of ReLU(dS/dA * A).

    The generic self-attention rule (Chefer et al. 2021, eq. 6): R = I; for each block in order,
    R <- R + Ā R with Ā = mean over heads of ReLU(dS/dA * A), S the explained (raw) score and A the
    block's attention probabilities; the map is the class token's row of R over the patch tokens (the
    mean of R's rows for a model without special tokens), as the authors' code.
    """

    def token_relevance(self, read: AttentionRead, target: TargetSpec) -> torch.Tensor:
        assert read.gradients is not None  # a gradient method's read always holds them
        steps = []
        for probabilities, gradients in zip(read.probabilities, read.gradients):
            averaged = (gradients.float() * probabilities.float()).clamp_min(0).mean(dim=1)
            steps.append(averaged + torch.eye(averaged.shape[-1], device=averaged.device))
        # R_L = (I + Ā_L) ... (I + Ā_1): the update R <- R + Ā R, block by block.
        return chained_row(steps, query_weights(read))
