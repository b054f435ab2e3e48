"""LeGrad: each block's positive gradient of its own class score with respect to its attention, averaged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..attention import AttentionRead
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..targets import TargetSpec, scores_for
from .attentionbase import AttentionExplainer
from .registry import register

ScoreProjection = Callable[[torch.Tensor], torch.Tensor]


@register(
    "legrad",
    paper="Bousselham et al., LeGrad: An Explainability Method for Vision Transformers via Feature "
    "Formation Sensitivity, ICCV 2025 (arXiv:2404.03214)",
)
class LeGrad(AttentionExplainer):
    """Each block's positive gradient of its own class score by its attention, averaged over heads, queries, blocks.

    Map = mean over blocks l of mean over heads and queries of ReLU(ds^l / dA^l), keys = patch tokens.

    s^l is block l's class score: the model's final norm and head applied to
    the mean of block l's output tokens (the authors' code and torchcam's
    ``LeGrad``); A^l is block l's attention probabilities. The graph is cut
    between blocks, so one backward of the sum of all s^l gives each block its
    own gradient (torchcam runs one backward per block). Every block by
    default, as the paper (the authors' CLIP wrapper defaults to the last
    two); ``target_layer`` chooses blocks.

    ``score_projection``: tokens ``(B, N, D)`` -> logits ``(B, classes)``;
    built in for torchvision ``VisionTransformer`` (``encoder.ln``,
    ``heads``), timm ViT/DeiT (``norm``, ``forward_head``: its pooling,
    ``fc_norm`` and distillation head) and Hugging Face ``...ForImageClassification``
    (``layernorm``, ``classifier``, DeiT's two heads averaged). A callable
    ``target`` receives these per-block logits.
    """

    separate_blocks = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        score_projection: ScoreProjection | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if score_projection is not None and not callable(score_projection):
            raise CamkitTypeError("score_projection must be a function from tokens (B, N, D) to logits (B, classes).")
        projection = score_projection or default_score_projection(model)
        if projection is None:
            raise CamkitError(
                f"LeGrad scores each block's tokens with the model's final norm and head, and does not know where "
                f"they are in {type(model).__name__}; pass score_projection= a function from tokens (B, N, D) "
                "to logits (B, classes)."
            )
        self.score_projection: ScoreProjection = projection

    def token_relevance(self, read: AttentionRead, target: TargetSpec) -> torch.Tensor:
        batch = read.probabilities[0].shape[0]
        per_block = target if target is not None or read.classes is None else read.classes
        with torch.enable_grad():
            scores = torch.stack(
                [scores_for(self.score_projection(tokens), per_block, batch)[0] for tokens in read.block_outputs]
            )
        gradients = read.gradients_of(scores)
        return torch.stack([gradient.float().clamp_min(0).mean(dim=(1, 2)) for gradient in gradients]).mean(dim=0)


def default_score_projection(model: nn.Module) -> ScoreProjection | None:
    """The final norm and head of a torchvision, timm or Hugging Face ViT, applied to the mean token."""
    final_norm, heads = getattr(getattr(model, "encoder", None), "ln", None), getattr(model, "heads", None)
    if isinstance(final_norm, nn.Module) and isinstance(heads, nn.Module):
        torchvision_norm, torchvision_heads = final_norm, heads
        return lambda tokens: torchvision_heads(torchvision_norm(tokens.mean(dim=1)))
    norm, forward_head = getattr(model, "norm", None), getattr(model, "forward_head", None)
    if isinstance(norm, nn.Module) and callable(forward_head):
        timm_norm, timm_head = norm, forward_head
        # Every token the mean: timm's own pooling (class token or average), fc_norm and heads apply unchanged.
        return lambda tokens: timm_head(timm_norm(tokens.mean(dim=1, keepdim=True).expand_as(tokens)))
    layernorm = getattr(getattr(model, "base_model", None), "layernorm", None)
    found = [getattr(model, name, None) for name in ("classifier", "cls_classifier", "distillation_classifier")]
    classifiers = [head for head in found if isinstance(head, nn.Module)]
    if isinstance(layernorm, nn.Module) and classifiers:
        hf_norm = layernorm
        return lambda tokens: torch.stack(
            [head(_pooled_for(head, hf_norm(tokens.mean(dim=1)))) for head in classifiers]
        ).mean(dim=0)
    return None


def _pooled_for(head: nn.Module, token: torch.Tensor) -> torch.Tensor:
    # DINOv2's head reads the class token beside the mean patch token: both are the mean token here.
    wants = getattr(head, "in_features", token.shape[-1])
    return torch.cat([token] * (wants // token.shape[-1]), dim=-1) if wants != token.shape[-1] else token
