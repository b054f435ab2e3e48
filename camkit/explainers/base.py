"""The pipeline every explainer shares: capture -> layer map -> ReLU -> upsample -> normalise / fuse.

A method overrides one step: ``channel_weights`` for the weighted-sum family
(:class:`ChannelWeightedExplainer`), ``layer_map`` for a method that builds
its map another way, or ``capture`` for one that needs other passes through
the model (Smooth Grad-CAM++). Everything stays a batched tensor on the
input's device, and the whole call runs inside :func:`camkit.modes.explaining`.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..capture import Capture, capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec, auto_layer, find_layers
from ..layouts import Reshape, patch_size_of
from ..modes import explaining
from ..ops.maps import fuse, normalised_at_size
from ..ops.weighting import weighted_sum
from ..results import Explanation
from ..targets import TargetSpec, logits_of

Fuse = Literal["mean", "max"]


class Explainer:
    """Base of all explainers. ``explainer(x, target)`` returns ``(B, H, W)`` maps in [0, 1].

    Args:
        model: any ``nn.Module`` taking ``(B, C, H, W)`` images (or ``(B, C, D, H, W)`` volumes).
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

    Calls on one model from several threads are serialised (one lock per
    model) and give the same maps as serial calls.
    """

    name: ClassVar[str] = ""  # set by @camkit.register
    paper: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        reshape: Reshape | None = None,
        fuse: Fuse = "mean",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if reshape is not None and not callable(reshape):
            raise CamkitTypeError("reshape must be a function from the layer's output to (B, K, h, w).")
        if fuse not in ("mean", "max"):
            raise CamkitError(f"fuse must be 'mean' or 'max', got {fuse!r}.")
        self.model = model
        self.reshape = reshape
        self.fuse: Fuse = fuse
        self.layers: list[tuple[str, nn.Module]] = find_layers(model, target_layer)

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
        images = _checked_input(x)
        with explaining(self.model):
            x = images.clone() if images.is_inference() else images
            if not self.layers:
                self.layers = [auto_layer(self.model, x)]
            captures = self.capture(x, target)
            layer_maps = [self.layer_map(captured).clamp_min(0) for captured in captures]
            maps = self.combine(layer_maps, tuple(x.shape[2:]))
        predictions, probabilities = _top_class(captures[0].output)
        return Explanation(
            images=images,
            maps=maps,
            layer_maps=layer_maps[0],
            scores=captures[0].scores,
            targets=captures[0].classes,
            predictions=predictions,
            probabilities=probabilities,
            method=self.name or type(self).__name__,
            layer=self.target_layer_name or "",
            uses_gradients=self.uses_gradients,
        )

    # The pipeline's steps: a method overrides one of them.
    def capture(self, x: torch.Tensor, target: TargetSpec) -> list[Capture]:
        """One forward (and backward, for gradient methods) through every target layer."""
        return capture(
            self.model, self.layers, x, target, with_gradients=self.uses_gradients,
            reshape=self.reshape, patch_size=patch_size_of(self.model),
        )

    def layer_map(self, captured: Capture) -> torch.Tensor:
        """The map at the layer's resolution before ReLU, ``(B, h, w)``."""
        raise NotImplementedError(f"{type(self).__name__} must define layer_map or channel_weights.")

    def combine(self, layer_maps: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """ReLU'd layer maps to the public map: upsampled, normalised per image, fused across layers."""
        if len(layer_maps) == 1:
            return normalised_at_size(layer_maps[0], size)
        return fuse(layer_maps, size, self.fuse)

    # pytorch-grad-cam users write `with GradCAM(...) as cam:`; hooks live only
    # for the duration of each call, so there is nothing to release.
    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.target_layer_name!r})"


class ChannelWeightedExplainer(Explainer):
    """Maps that are a weighted sum of the layer's channels: sum_k w_k A_k."""

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        """One weight per image and channel, ``(B, K)``."""
        raise NotImplementedError(f"{type(self).__name__} must define channel_weights.")

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return weighted_sum(self.channel_weights(captured), captured.activations)


def _checked_input(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise CamkitTypeError(
            f"x must be a torch.Tensor of images (B, C, H, W), got {type(x).__name__}. "
            "Convert images with torchvision.transforms.functional.to_tensor and stack them."
        )
    if x.dim() not in (4, 5):
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise CamkitError(
            f"x must be a 4-D batch (B, C, H, W) or a 5-D batch of volumes (B, C, D, H, W), "
            f"got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[0] == 0:
        raise CamkitError("x is an empty batch (B = 0); pass at least one image.")
    if not x.is_floating_point():
        raise CamkitTypeError(
            f"x must be a floating-point tensor, got {x.dtype}. Convert with x.float() / 255 "
            "and normalise it the way the model expects."
        )
    if not bool(torch.isfinite(x).all()):
        raise CamkitError("x contains NaN or infinite values; clean the input before explaining it.")
    return x


def _top_class(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    try:
        logits = logits_of(output)
    except CamkitError:
        return None, None
    if logits.dim() != 2:
        return None, None
    probabilities, predictions = logits.float().softmax(dim=1).max(dim=1)
    return predictions, probabilities
