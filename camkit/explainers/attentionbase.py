"""Explainers that read a Vision Transformer's attention instead of a layer's activations.

:class:`AttentionExplainer` plugs into the shared pipeline by overriding
``capture``: one pass through :func:`camkit.attention.read_attention` gives
every block's attention probabilities (and their gradients), the method turns
them into one relevance per token (``token_relevance``), and the patch tokens
laid on their grid become the layer map; ReLU, upsampling, normalisation,
``augment`` and passes of copies are the base's. ``target_layer`` chooses the
blocks (a block, its attention or anything inside it; None: every block).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention import AttentionBlock, AttentionRead, attention_blocks, grid_of, read_attention
from ..calls import ModelCall
from ..capture import Capture
from ..errors import CamkitError
from ..layers import LayersSpec
from ..modes import full_precision
from ..targets import TargetSpec
from .base import Explainer


class AttentionExplainer(Explainer):
    """Base of the attention methods: ``token_relevance`` of one :class:`~camkit.attention.AttentionRead`."""

    # LeGrad differentiates a score of each block's own output: the graph is cut between blocks.
    separate_blocks = False

    def __init__(self, model: nn.Module, target_layer: LayersSpec = None, **options: Any) -> None:
        super().__init__(model, target_layer, **options)
        within = [module for _, module in self.layers] if self.layers else None
        self.blocks: list[AttentionBlock] = attention_blocks(model, within)
        if not self.blocks:
            where = "" if within is None else f" at or around {self.target_layer_name!r}"
            raise CamkitError(
                f"{self.name or type(self).__name__} reads the attention of a Vision Transformer, and found no "
                f"attention block{where} in {type(model).__name__} (it reads torchvision, timm and Hugging Face "
                "ViT/DeiT blocks). Use a CAM method for this model, or name the transformer blocks as target_layer."
            )
        self.layers = [(block.name, block.block) for block in self.blocks]

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        return bool(attention_blocks(model))

    @property
    def target_layer_name(self) -> str | None:
        """The blocks read: one name, or the first and last joined by '..'."""
        names = [name for name, _ in self.layers]
        return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        x = call.x
        read = read_attention(
            self.model,
            self.blocks,
            call,
            target,
            with_gradients=self.uses_gradients,
            separate_blocks=self.separate_blocks,
        )
        with full_precision(x.device):  # the relevance in float32 also under the caller's autocast
            relevance = self.token_relevance(read, target).float()
        scores = self.explained_scores(read)
        return [Capture(grid_of(relevance, read).detach(), None, read.output, scores, read.classes)]

    def token_relevance(self, read: AttentionRead, target: TargetSpec) -> torch.Tensor:
        """Each key token's relevance ``(B, N)``, special tokens included (they are dropped afterwards)."""
        raise NotImplementedError(f"{type(self).__name__} must define token_relevance.")

    def explained_scores(self, read: AttentionRead) -> torch.Tensor:
        return read.scores

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return captured.activations[:, 0]


def chained_row(matrices: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """``rows @ M_L @ ... @ M_1`` for ``matrices = [M_1, ..., M_L]`` (B, N, N): a row of the product
    of the blocks' matrices, later blocks on the left, by vector products (no N x N x N product)."""
    row = rows.expand(matrices[0].shape[0], -1).unsqueeze(1)
    for matrix in reversed(matrices):
        row = row @ matrix
    return row.squeeze(1)


__all__ = ["AttentionExplainer", "chained_row"]
