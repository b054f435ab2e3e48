"""The pipeline every explainer shares: forward -> weights -> combine -> ReLU -> upsample -> normalise.

A method overrides one function: ``channel_weights`` for the weighted-sum
family (``ChannelWeightedCAM``), or ``layer_maps`` for a method that builds its
map another way. Everything stays a batched tensor on the input's device.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..hooks import Capture, Reshape, capture_layers
from ..layers import LayerSpec, auto_layer, find_layer, patch_size_of
from ..ops.maps import finish, min_max_normalise, upsample
from ..ops.weighting import weighted_sum
from ..results import Explanation
from ..targets import TargetSpec, logits_of

logger = logging.getLogger("camkit")


class CAM:
    """Base of all explainers. ``cam(x, target)`` returns ``(B, H, W)`` maps in [0, 1].

    Args:
        model: any ``nn.Module`` taking ``(B, C, H, W)`` images.
        target_layer: dotted module name (``"layer4"``), the module itself, or
            None to choose automatically on the first call (the choice is kept
            in ``target_layer_name`` and logged on the ``camkit`` logger). A
            list of them gives one map fused from all, captured in one pass.
        reshape: optional function turning the layer's raw output into
            ``(B, K, h, w)``; overrides camkit's token / channels-last rules.
        fuse: how the maps of several layers combine: ``"mean"`` (as
            pytorch-grad-cam) or ``"max"``; each layer's map is normalised
            at its own resolution and upsampled first, the fused map
            normalised again.
    """

    name: ClassVar[str] = "cam"
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[str | nn.Module] = None,
        *,
        reshape: Reshape | None = None,
        fuse: Literal["mean", "max"] = "mean",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if reshape is not None and not callable(reshape):
            raise TypeError("reshape must be a function from the layer's output to (B, K, h, w).")
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}.")
        self.model = model
        self.reshape = reshape
        self.fuse = fuse
        self.layers: list[tuple[str, nn.Module]] = []
        if isinstance(target_layer, (list, tuple)):
            if not target_layer:
                raise ValueError("target_layer is an empty list; name at least one layer, or pass None.")
            self.layers = [find_layer(model, layer) for layer in target_layer]
        elif target_layer is not None:
            self.layers = [find_layer(model, target_layer)]

    @property
    def target_layer_name(self) -> str | None:
        """The explained layer's dotted name (several joined by '+'); None until chosen."""
        return "+".join(name for name, _ in self.layers) if self.layers else None

    @property
    def target_layer(self) -> nn.Module | None:
        return self.layers[0][1] if self.layers else None

    def __call__(self, x: torch.Tensor, target: TargetSpec = None) -> torch.Tensor:
        """Maps ``(B, H, W)``, float32, on ``x.device``, each in [0, 1]."""
        return self.explain(x, target).maps

    def explain(self, x: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """The maps together with targets, predictions and layer-resolution maps."""
        x = self._checked_input(x)
        captures = self.capture_all(x, target)
        per_layer = [self.layer_maps(captured).clamp_min(0) for captured in captures]
        size = tuple(x.shape[2:])
        if len(per_layer) == 1:
            maps = finish(per_layer[0], size)
        else:
            # As pytorch-grad-cam: each layer normalised at its own resolution, then upsampled.
            stacked = torch.stack([upsample(min_max_normalise(layer_map), size) for layer_map in per_layer])
            maps = min_max_normalise(stacked.mean(0) if self.fuse == "mean" else stacked.amax(0))
        captured, layer_maps = captures[0], per_layer[0]
        predictions, probabilities = _top_class(captured.output)
        return Explanation(
            images=x,
            maps=maps,
            layer_maps=layer_maps,
            scores=captured.scores,
            targets=captured.classes,
            predictions=predictions,
            probabilities=probabilities,
            method=self.name,
            layer=self.target_layer_name or "",
        )

    def capture_all(self, x: torch.Tensor, target: TargetSpec) -> list[Capture]:
        """One forward (and backward, for gradient methods) through every target layer."""
        return self._capture(x, target, self.uses_gradients)

    def capture(self, x: torch.Tensor, target: TargetSpec) -> Capture:
        """The first (usually the only) target layer's capture."""
        return self.capture_all(x, target)[0]

    def _capture(self, x: torch.Tensor, target: TargetSpec, with_gradients: bool) -> list[Capture]:
        self._choose_layer(x)
        return capture_layers(
            self.model, self.layers, x, target, with_gradients=with_gradients,
            reshape=self.reshape, patch_size=patch_size_of(self.model),
        )

    def layer_maps(self, captured: Capture) -> torch.Tensor:
        """The map at the layer's resolution before ReLU, ``(B, h, w)``."""
        raise NotImplementedError

    # Hooks live only for the duration of a call; the context-manager form is
    # kept for users coming from pytorch-grad-cam.
    def __enter__(self) -> "CAM":
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.target_layer_name!r})"

    def _choose_layer(self, x: torch.Tensor) -> None:
        if not self.layers:
            self.layers = [auto_layer(self.model, x)]

    @staticmethod
    def _checked_input(x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"x must be a torch.Tensor of images (B, C, H, W), got {type(x).__name__}. "
                "Convert images with torchvision.transforms.functional.to_tensor and stack them."
            )
        if x.dim() not in (4, 5):
            hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
            raise ValueError(
                f"x must be a 4-D batch (B, C, H, W) or a 5-D batch of volumes (B, C, D, H, W), "
                f"got shape {tuple(x.shape)}.{hint}"
            )
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch (B = 0); pass at least one image.")
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point tensor, got {x.dtype}. Convert with x.float() / 255 "
                "and normalise it the way the model expects."
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values; clean the input before explaining it.")
        return x


class ChannelWeightedCAM(CAM):
    """Maps that are a weighted sum of the layer's channels: sum_k w_k A_k."""

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        """One weight per image and channel, ``(B, K)``."""
        raise NotImplementedError

    def layer_maps(self, captured: Capture) -> torch.Tensor:
        return weighted_sum(self.channel_weights(captured), captured.activations)


def _top_class(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    try:
        logits = logits_of(output)
    except TypeError:
        return None, None
    if logits.dim() != 2:
        return None, None
    probabilities, predictions = logits.float().softmax(dim=1).max(dim=1)
    return predictions, probabilities
