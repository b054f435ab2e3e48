"""Attention rollout: the product of the blocks' attention, averaged with the identity, rows normalised."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..attention import AttentionRead, query_weights
from ..errors import CamkitError
from ..layers import LayersSpec
from ..targets import TargetSpec
from .attentionbase import AttentionExplainer, chained_row
from .registry import register

HeadFusion = Literal["mean", "max", "min"]


@register(
    "attentionrollout", paper="Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020 (arXiv:2005.00928)"
)
class AttentionRollout(AttentionExplainer):
    """The class token's row of the product of the blocks' head-fused attention, each averaged with the identity.

    R = Ã_L ... Ã_1 with Ã = (fuse_h(A) + I) / 2, rows normalised to sum 1;
    the map is the class token's row of R over the patch tokens.

    ``head_fusion``: the heads' probabilities fused by ``"mean"`` (the paper),
    ``"max"`` or ``"min"``. ``discard_ratio``: per image and block, that
    fraction of the fused matrix's smallest entries set to zero before the
    identity is added (the entry of the first token attending to itself is
    kept), as the popular vit-explain script offers. Rows are normalised to
    sum 1, as the paper says; that script divides each column j by the sum
    of row j instead, which differs as soon as a fusion or a discard leaves
    rows that do not sum to 1. A model without special tokens (average
    pooling) is explained by the mean of R's rows. Gradient-free; the target
    is ignored for the map.
    """

    uses_gradients = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        **options: Any,
    ) -> None:
        if head_fusion not in ("mean", "max", "min"):
            raise CamkitError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}.")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise CamkitError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}.")
        super().__init__(model, target_layer, **options)
        self.head_fusion: HeadFusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def token_relevance(self, read: AttentionRead, target: TargetSpec) -> torch.Tensor:
        return chained_row(
            [self.mixed(probabilities.float()) for probabilities in read.probabilities], query_weights(read)
        )

    def mixed(self, probabilities: torch.Tensor) -> torch.Tensor:
        """One block's Ã ``(B, N, N)`` from its probabilities ``(B, heads, N, N)``."""
        if self.head_fusion == "mean":
            fused = probabilities.mean(dim=1)
        elif self.head_fusion == "max":
            fused = probabilities.amax(dim=1)
        else:
            fused = probabilities.amin(dim=1)
        tokens = fused.shape[-1]
        discarded = int(tokens * tokens * self.discard_ratio)
        if discarded:
            flat = fused.flatten(1)
            lowest = flat.topk(discarded, dim=1, largest=False).indices
            dropped = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
            dropped[:, 0] = False
            fused = flat.masked_fill(dropped, 0.0).reshape(fused.shape)
        mixed = (fused + torch.eye(tokens, device=fused.device, dtype=fused.dtype)) / 2
        return mixed / mixed.sum(dim=-1, keepdim=True)
