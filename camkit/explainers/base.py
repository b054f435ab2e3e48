"""The pipeline every explainer shares: capture -> layer map -> ReLU -> upsample -> normalise / fuse.

A method overrides one step: ``channel_weights`` for the weighted-sum family
(:class:`ChannelWeightedExplainer`), ``layer_map`` for a method that builds
its map another way, or ``capture`` for one that needs other passes through
the model (Smooth Grad-CAM++). Everything stays a batched tensor on the
input's device, and the whole call runs inside :func:`camkit.modes.explaining`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..calls import InputsSpec, ModelCall
from ..capture import Capture, capture, concatenated
from ..detection import unwrapped
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec, auto_layer, find_layers, refuse_torchscript
from ..layouts import Reshape, patch_size_of
from ..modes import explaining, full_precision
from ..ops.augment import COPIES, augmented_batch, identity_rows, merged_maps
from ..ops.maps import fuse, min_max_normalise, normalised_at_size
from ..ops.pca import principal_projection
from ..ops.weighting import weighted_sum
from ..results import DetectionExplanation, Explanation
from ..targets import PerImageTargets, TargetSpec, as_target, logits_of, model_class_names, target_rows
from .detections import explain_detections

Fuse = Literal["mean", "max", "product"]
# Images in a pass of copies by default, unless the input batch is larger (see Explainer's batch_size).
PASS_IMAGES = 8


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
            pytorch-grad-cam), ``"max"`` or ``"product"`` (RefineCAM's rule:
            each layer's map also normalised again after upsampling); each
            layer's map is normalised at its own resolution and upsampled
            first, the fused map normalised again.
        augment: test-time augmentation (six flipped and intensity-scaled
            copies, maps mapped back and averaged).
        batch_size: the most images one pass through the model takes where a
            method multiplies the batch (``augment``'s copies, Smooth
            Grad-CAM++'s noisy copies). None: ``PASS_IMAGES`` (8) images per
            pass, or one copy of the input batch when it is larger, so peak
            memory stays within that of the input batch or of 8 images.
            Measured on a 2-core CPU: resnet50 at 224 x 224, batch 8, Smooth
            Grad-CAM++ ran at 4.2x the floor with 8 images per pass and 5.9x
            with 32; one image of resnet18 at 112 x 112 took 0.15 s in passes
            of 8 copies and 0.23 s in passes of 1 (benchmarks/RESULTS.md).
            Results do not depend on it.
        class_names: the model's class names, so that ``target="goldfish"``
            works and results name their classes (default: the model's own
            ``class_names`` attribute or Hugging Face ``config.id2label``).

    Calls on one model from several threads are serialised (one lock per
    model) and give the same maps as serial calls.
    """

    name: ClassVar[str] = ""  # set by @camkit.register
    paper: ClassVar[str] = ""
    # Not a ClassVar: a method wrapping another (Refine-CAM) takes its base's value per instance.
    uses_gradients: bool = True
    # Whether the map changes with the explained class (False: the target only names it). A method whose
    # options decide it (CF-CAM's weighting) sets it per instance.
    class_specific: bool = True
    # Methods that read a classifier's class logits (CAM, Finer-CAM) cannot explain a detection's score.
    needs_class_logits: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        reshape: Reshape | None = None,
        fuse: Fuse = "mean",
        augment: bool = False,
        batch_size: int | None = None,
        class_names: Sequence[str] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise CamkitTypeError(
                f"{type(self).__name__} has no option {min(unknown)!r}; its options are "
                f"{', '.join(known_options(type(self)))}."
            )
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        refuse_torchscript(model)
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names)
        ):
            raise CamkitTypeError("class_names must be a list of strings, one per class index.")
        self.class_names = list(class_names) if class_names is not None else None
        if reshape is not None and not callable(reshape):
            raise CamkitTypeError("reshape must be a function from the layer's output to (B, K, h, w).")
        if fuse not in ("mean", "max", "product"):
            raise CamkitError(f"fuse must be 'mean', 'max' or 'product', got {fuse!r}.")
        self.model = unwrapped(model)  # ultralytics' YOLO() wrapper predicts without gradients; explain its network
        self.reshape = reshape
        if not isinstance(augment, bool):
            raise CamkitTypeError(f"augment must be True or False, got {augment!r}.")
        self.fuse: Fuse = fuse
        self.augment = augment
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise CamkitError(
                f"batch_size must be a positive int (images per pass through the model) or None, got {batch_size!r}."
            )
        self.batch_size = batch_size
        self.layers: list[tuple[str, nn.Module]] = find_layers(self.model, target_layer)

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        """Whether the method can explain ``model`` at all (``--method all`` runs those that can): every CAM
        method can; the attention methods need transformer blocks."""
        return True

    @property
    def target_layer_name(self) -> str | None:
        """The explained layer's dotted name (several joined by '+'); None until chosen."""
        return "+".join(name for name, _ in self.layers) if self.layers else None

    @property
    def target_layer(self) -> nn.Module | None:
        return self.layers[0][1] if self.layers else None

    def __call__(self, x: torch.Tensor, target: TargetSpec = None, *, inputs: InputsSpec = None) -> torch.Tensor:
        """Maps ``(B, H, W)``, float32, on ``x.device``, each in [0, 1].

        ``inputs``: the model's other inputs, a dict of keyword arguments or a
        tuple of positional ones after ``x`` (see :class:`camkit.calls.ModelCall`).
        """
        return self.explain(x, target, inputs=inputs).maps

    def explain(self, x: torch.Tensor, target: TargetSpec = None, *, inputs: InputsSpec = None) -> Explanation:
        """The maps together with targets, predictions, layer-resolution maps and channel weights."""
        images = _checked_input(x)
        target = self._target(target, images.shape[0])
        try:
            with explaining(self.model):
                x = images.clone() if images.is_inference() else images
                call = ModelCall.of(self.model, x, inputs)
                if not self.layers:
                    self.layers = [auto_layer(self.model, call)]
                if self.augment:
                    return self._augmented_explanation(images, call, target)
                captures = self.capture(call, target)
                with full_precision(x.device):
                    layer_maps, weights = self._layer_maps(captures)
                    maps = self.combine(layer_maps, tuple(x.shape[2:]))
        except RuntimeError as error:
            mismatch = _channel_mismatch(self.model, images)
            if mismatch:
                raise CamkitError(mismatch) from error
            raise
        return self._explanation(images, maps, layer_maps[0], captures[0], weights)

    def _layer_maps(self, captures: list[Capture]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each layer's ReLU'd map, and the first layer's channel weights (None for methods without)."""
        found = [self.layer_map_and_weights(captured) for captured in captures]
        return [layer_map.clamp_min(0) for layer_map, _ in found], found[0][1]

    def explain_detections(
        self,
        x: torch.Tensor,
        detections: Sequence[Mapping[str, Any]] | None = None,
        *,
        score_threshold: float = 0.25,
        max_detections: int = 20,
        min_iou: float = 0.5,
        score: str = "box",
        inputs: InputsSpec = None,
    ) -> DetectionExplanation:
        """One map per detection of a detector (torchvision, ultralytics YOLO, Hugging Face DETR family).

        With ``detections=None``: the detector's own detections scoring above
        ``score_threshold`` (after its NMS), at most ``max_detections`` per image,
        best first. With ``detections`` (one dict per image with ``boxes``
        ``(N, 4)`` xyxy in input pixels and ``labels``, e.g. ground truth): for
        each box, the detection of its label overlapping it most (IoU >= ``min_iou``).
        ``score="mask"`` explains an instance segmenter's (Mask R-CNN, YOLO-seg)
        mask score instead of its box score: the mean of the detection's mask
        probabilities over its own mask (where they exceed 0.5; YOLO-seg's
        cropped to its box); detections are still chosen by their box score.
        One forward serves the batch; gradient methods get all detections'
        gradients from batched backwards (methods with passes of their own run
        one call per detection). ``inputs``: the detector's other inputs, as for :meth:`explain`
        (an open-vocabulary detector's texts). See :mod:`camkit.explainers.detections`.
        """
        # A method that runs passes of its own (noisy copies, perturbed forwards) explains each detection alone.
        one_pass = type(self).capture is Explainer.capture
        return explain_detections(
            self, _checked_input(x), detections, (score_threshold, max_detections, min_iou), one_pass, score, inputs
        )

    def model_class_names(self) -> list[str] | None:
        """``class_names`` as given, else the names the model carries (``class_names``, ``config.id2label``)."""
        return self.class_names if self.class_names is not None else model_class_names(self.model)

    def _target(self, target: Any, batch: int) -> TargetSpec:
        """Class names to indices, one callable per image to one target; checked against the batch."""
        resolved = as_target(target, self.model_class_names())
        if isinstance(resolved, PerImageTargets) and len(resolved.callables) != batch:
            raise CamkitError(
                f"target has {len(resolved.callables)} callables for a batch of {batch} images; "
                "give one callable per image, or one callable(output) -> (B,) scores for all."
            )
        return resolved

    def _augmented_explanation(self, images: torch.Tensor, call: ModelCall, target: TargetSpec) -> Explanation:
        x, batch = call.x, call.batch
        if target is not None and not isinstance(target, int) and not callable(target):
            # One class per image: each of its copies explains the same class.
            try:
                per_image = torch.as_tensor(target, device=x.device).reshape(-1)
            except (TypeError, ValueError) as error:
                raise CamkitTypeError(
                    f"target must be None, an int, one int per image, or a callable; got {type(target).__name__}."
                ) from error
            if per_image.numel() not in (1, batch):
                raise CamkitError(
                    f"target has {per_image.numel()} class indices for a batch of {batch} images; "
                    "give one int for all images or exactly one per image."
                )
            target = per_image.expand(batch).repeat(COPIES)
        else:
            target = target_rows(target, torch.arange(batch, device=x.device).repeat(COPIES))
        captures = self._capture_in_passes(call.repeat(COPIES, augmented_batch(x)), target, batch)
        with full_precision(x.device):
            layer_maps, weights = self._layer_maps(captures)
            maps = min_max_normalise(merged_maps(self.combine(layer_maps, tuple(x.shape[2:])), batch))
        first = captures[0]
        classes = identity_rows(first.classes, batch) if first.classes is not None else None
        unchanged = Capture(
            first.activations, first.gradients, _rows(first.output, batch), identity_rows(first.scores, batch), classes
        )
        return self._explanation(
            images,
            maps,
            identity_rows(layer_maps[0], batch),
            unchanged,
            identity_rows(weights, batch) if weights is not None else None,
        )

    def images_per_pass(self, batch: int) -> int:
        """Images per pass when a method runs copies of a batch of ``batch``: ``batch_size``, or the default rule."""
        return self.batch_size if self.batch_size is not None else max(batch, PASS_IMAGES)

    def _capture_in_passes(self, copies: ModelCall, target: TargetSpec, batch: int) -> list[Capture]:
        """Captures of copy-major copies, whole copies per pass, at most ``batch_size`` images when it allows one."""
        per_pass = batch * max(1, self.images_per_pass(batch) // batch)
        parts = []
        for start in range(0, copies.batch, per_pass):
            rows = torch.arange(start, min(start + per_pass, copies.batch), device=copies.x.device)
            parts.append(self.capture(copies.rows(rows), target_rows(target, rows)))
        return [concatenated(layer_parts) for layer_parts in zip(*parts)]

    def _explanation(
        self,
        images: torch.Tensor,
        maps: torch.Tensor,
        layer_maps: torch.Tensor,
        captured: Capture,
        channel_weights: torch.Tensor | None = None,
    ) -> Explanation:
        predictions, probabilities = _top_class(captured.output)
        # The feature maps the weights weigh (the unchanged images' rows under augment), for the figure's
        # top-channel panels.
        activations = captured.activations
        if channel_weights is not None and activations is not None and activations.shape[0] != images.shape[0]:
            activations = identity_rows(activations, images.shape[0])
        return Explanation(
            images=images,
            maps=maps,
            layer_maps=layer_maps,
            scores=captured.scores,
            targets=captured.classes,
            predictions=predictions,
            probabilities=probabilities,
            method=self.name or type(self).__name__,
            layer=self.target_layer_name or "",
            uses_gradients=self.uses_gradients,
            class_specific=self.class_specific,
            channel_weights=channel_weights,
            channel_activations=activations.detach()
            if channel_weights is not None and activations is not None
            else None,
            class_names=self.model_class_names(),
        )

    # The pipeline's steps: a method overrides one of them.
    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        """One forward (and backward, for gradient methods) through every target layer."""
        return capture(
            self.model,
            self.layers,
            call,
            target,
            with_gradients=self.uses_gradients,
            reshape=self.reshape,
            patch_size=patch_size_of(self.model),
        )

    def layer_map(self, captured: Capture) -> torch.Tensor:
        """The map at the layer's resolution before ReLU, ``(B, h, w)``."""
        raise NotImplementedError(f"{type(self).__name__} must define layer_map or channel_weights.")

    def layer_map_and_weights(self, captured: Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer map and the ``(B, K)`` channel weights it sums with (None: the method has none)."""
        return self.layer_map(captured), None

    @property
    def weighs_channels(self) -> bool:
        """Whether results carry ``channel_weights`` (the map is a weighted sum of the layer's channels)."""
        return False

    def combine(self, layer_maps: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """ReLU'd layer maps to the public map: upsampled, normalised per image, fused across layers."""
        if len(layer_maps) == 1:
            return normalised_at_size(layer_maps[0], size)
        return fuse(layer_maps, size, self.fuse)

    # pytorch-grad-cam users write `with GradCAM(...) as cam:`; hooks live only
    # for the duration of each call, so there is nothing to release.
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.target_layer_name!r})"


class ChannelWeightedExplainer(Explainer):
    """Maps that are a weighted sum of the layer's channels: sum_k w_k A_k.

    ``eigen_smooth=True`` replaces the sum by the first principal component
    of the weighted channels w_k A_k (pytorch-grad-cam's option), its sign
    chosen to correlate with their channel mean, as Eigen-CAM's.
    ``channels`` (channel indices) sums only those feature maps: the others
    get weight 0 (Smooth Grad-CAM++'s "subset of feature maps"). The weights
    used come back as ``Explanation.channel_weights``.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        eigen_smooth: bool = False,
        channels: Sequence[int] | torch.Tensor | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if not isinstance(eigen_smooth, bool):
            raise CamkitTypeError(f"eigen_smooth must be True or False, got {eigen_smooth!r}.")
        self.eigen_smooth = eigen_smooth
        self.channels = _checked_channels(channels)

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        """One weight per image and channel, ``(B, K)``."""
        raise NotImplementedError(f"{type(self).__name__} must define channel_weights.")

    def contributions(self, captured: Capture) -> torch.Tensor:
        """Each channel's weighted activation w_k A_k, ``(B, K, *grid)``."""
        return self._weighted(self.selected_weights(captured), captured.activations)

    def selected_weights(self, captured: Capture) -> torch.Tensor:
        """``channel_weights``, 0 outside ``channels``."""
        weights = self.channel_weights(captured)
        return weights * self.channel_mask(weights.shape[1], weights) if self.channels is not None else weights

    def channel_mask(self, count: int, like: torch.Tensor) -> torch.Tensor:
        """``(K,)`` 1 on the chosen ``channels``, 0 elsewhere (all ones without ``channels``)."""
        mask = torch.ones(count, dtype=like.dtype, device=like.device)
        if self.channels is None:
            return mask
        if int(self.channels.max()) >= count:
            raise CamkitError(
                f"channels {self.channels.tolist()} go past the layer's {count} channels (0..{count - 1})."
            )
        return torch.zeros_like(mask).index_fill_(0, self.channels.to(like.device), 1)

    def layer_map(self, captured: Capture) -> torch.Tensor:
        return self.layer_map_and_weights(captured)[0]

    @property
    def weighs_channels(self) -> bool:
        return True

    def layer_map_and_weights(self, captured: Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = self.selected_weights(captured)
        if self.eigen_smooth:
            return principal_projection(self._weighted(weights, captured.activations)), weights
        return weighted_sum(weights, captured.activations), weights

    @staticmethod
    def _weighted(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        return weights.reshape(*weights.shape, *([1] * (activations.dim() - 2))) * activations


class ElementWiseExplainer(ChannelWeightedExplainer):
    """Maps that sum per-position contributions over channels: sum_k c_k(i, j), no pooled weight."""

    def contributions(self, captured: Capture) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define contributions.")

    @property
    def weighs_channels(self) -> bool:
        return False

    def layer_map_and_weights(self, captured: Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
        contributions = self.contributions(captured)
        if self.channels is not None:
            mask = self.channel_mask(contributions.shape[1], contributions)
            contributions = contributions * mask.reshape(-1, *([1] * (contributions.dim() - 2)))
        return principal_projection(contributions) if self.eigen_smooth else contributions.sum(dim=1), None


def _checked_channels(channels: Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    if channels is None:
        return None
    try:
        chosen = torch.as_tensor(channels).reshape(-1)
    except (TypeError, ValueError) as error:
        raise CamkitTypeError(f"channels must be channel indices (a list of ints), got {channels!r}.") from error
    if chosen.numel() == 0 or chosen.dtype.is_floating_point or chosen.dtype == torch.bool or bool((chosen < 0).any()):
        raise CamkitError(f"channels must be non-empty, non-negative channel indices, got {channels!r}.")
    return chosen.long()


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
    if min(x.shape[1:]) == 0:
        raise CamkitError(
            f"x has shape {tuple(x.shape)}: an image with no channels, height or width has no pixels to explain."
        )
    if not x.is_floating_point():
        raise CamkitTypeError(
            f"x must be a floating-point tensor, got {x.dtype}. Convert with x.float() / 255 "
            "and normalise it the way the model expects."
        )
    if not bool(torch.isfinite(x).all()):
        raise CamkitError("x contains NaN or infinite values; clean the input before explaining it.")
    return x


def known_options(cls: type) -> list[str]:
    """The keyword options an explainer class takes, gathered over its ``__init__`` chain."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if (
                parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                and parameter.name not in ("self", "model")
                and parameter.name not in names
            ):
                names.append(parameter.name)
    return names


def _channel_mismatch(model: nn.Module, x: torch.Tensor) -> str | None:
    """After the model failed: why, when its first convolution wants another channel count than ``x`` has."""
    first = next((module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Conv3d))), None)
    if first is None or first.in_channels == x.shape[1]:
        return None
    hint = (
        " Repeat a grayscale image to RGB with x.expand(-1, 3, -1, -1)."
        if (x.shape[1], first.in_channels) == (1, 3)
        else ""
    )
    return (
        f"The model's first convolution takes {first.in_channels}-channel images, but x has {x.shape[1]} "
        f"channel(s) (shape {tuple(x.shape)}).{hint}"
    )


def _rows(output: Any, batch: int) -> Any:
    """The unchanged images' part of the first pass's output over augmented copies (the pass may hold several)."""
    if isinstance(output, torch.Tensor):
        whole_copies = output.dim() and output.shape[0] > batch and output.shape[0] % batch == 0
        return identity_rows(output, batch) if whole_copies else output
    if isinstance(output, (tuple, list)):
        return type(output)(_rows(item, batch) for item in output)
    if isinstance(output, dict):
        return {key: _rows(value, batch) for key, value in output.items()}
    logits = getattr(output, "logits", None)
    return identity_rows(logits, batch) if isinstance(logits, torch.Tensor) else output


def _top_class(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    try:
        logits = logits_of(output)
    except CamkitError:
        return None, None
    if logits.dim() != 2:
        return None, None
    probabilities, predictions = logits.float().softmax(dim=1).max(dim=1)
    return predictions, probabilities
