"""Ablation-CAM: each channel weighted by the relative drop of the score when it is zeroed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture, scored_target
from ..errors import CamkitError
from ..layers import LayersSpec
from ..ops.perturbation import rows_of, scattered, strongest_channels
from .perturbation import PerturbationExplainer, Probe, output_replaced, row_scores
from .registry import register

logger = logging.getLogger("camkit")

Path = Literal["auto", "downstream", "full"]


class _DownstreamRefused(Exception):
    """The downstream-only pass gave a result that a plain forward would not."""


@register(
    "ablationcam",
    paper="Desai & Ramaswamy, Ablation-CAM: Visual Explanations for Deep Convolutional "
    "Network via Gradient-free Localization, WACV 2020",
)
class AblationCAM(PerturbationExplainer):
    """Each channel weighted by the relative drop of the score when it is zeroed; gradient-free.

    w_k = (S - S_k) / S, S the explained score (raw logit) and S_k the score
    with channel k of the layer set to zero; map = ReLU(sum_k w_k A_k). Where
    S is exactly 0 the formula is undefined and the weights are 0.

    Only the network after the layer depends on the ablation. With
    ``path="auto"`` (default) a hook on the layer replaces its output of the
    chunk's images by the ablated copies, so the upstream part runs once per
    chunk on the images alone and only the downstream part runs on the
    copies. Each chunk also carries one unablated copy per image; if their
    scores differ from S, or the downstream part fails on the larger batch
    (a skip connection from before the layer, as a transformer block's
    residual around its first norm), the copies are made at the input of the
    enclosing module instead (the block), then of the module enclosing that,
    and only when none works camkit falls back to full forwards of the
    ablated copies. ``path_used`` says which ran ("downstream", "downstream
    from 'encoder.layers.3'" or "full"), also logged on the ``camkit`` logger. ``path="full"`` forces full forwards,
    ``path="downstream"`` refuses the fallback.
    """

    def __init__(
        self, model: nn.Module, target_layer: LayersSpec = None, *, path: Path = "auto", **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        if path not in ("auto", "downstream", "full"):
            raise CamkitError(f"path must be 'auto', 'downstream' or 'full', got {path!r}.")
        self.path: Path = path
        self.path_used: str | None = None

    def score_channels(
        self,
        call: ModelCall,
        captured: Capture,
        layer: nn.Module,
        probe: Probe,
        target: torch.Tensor | Callable[[Any], torch.Tensor],
    ) -> torch.Tensor:
        activations, clean_scores = captured.activations, captured.scores
        batch, channels = activations.shape[:2]
        channel_dim = _channel_dim(probe.layer_shape, activations.shape)
        image_index, channel_index = rows_of(strongest_channels(activations, self.top_channels))
        ablated: torch.Tensor | None = None
        # Per-image inputs would have to follow the fanned-out copies past the layer: full forwards only.
        if self.path == "downstream" and call.has_per_image_inputs:
            raise CamkitError(
                "path='downstream' cannot fan per-image inputs out to the ablated copies; use path='auto' or 'full'."
            )
        if self.path != "full" and not call.has_per_image_inputs:
            refusals = []
            # Copies from the layer's output on; where the network mixes in a tensor from before the
            # layer (a transformer block's residual), copies from the input of the enclosing block instead.
            for where, fan_at in self._fan_out_points(layer):
                try:
                    ablated = self._ablated_scores(
                        call,
                        layer,
                        channel_dim,
                        image_index,
                        channel_index,
                        target,
                        clean_scores,
                        self.rows_per_chunk(call.x, probe.largest_downstream, with_input=False),
                        fan_at=fan_at,
                    )
                    self.path_used = "downstream" if fan_at is layer else f"downstream from {where}"
                    break
                except (
                    _DownstreamRefused,
                    RuntimeError,
                    IndexError,
                    CamkitError,
                ) as error:  # a real error recurs below
                    refusals.append(f"from {where}: {_first_line(error)}")
            if ablated is None:
                if self.path == "downstream":
                    raise CamkitError(
                        f"The network after the layer cannot run on a batch of ablated copies "
                        f"({'; '.join(refusals)}); use path='auto' or 'full'."
                    ) from None
                logger.info(
                    "Ablation-CAM: no downstream-only pass reproduced the clean scores (%s); running full forwards.",
                    "; ".join(refusals),
                )
        if ablated is None:
            ablated = self._ablated_scores(
                call,
                layer,
                channel_dim,
                image_index,
                channel_index,
                target,
                clean_scores,
                self.rows_per_chunk(call.x, probe.largest),
                fan_at=None,
            )
            self.path_used = "full"
        logger.info("Ablation-CAM ran the %s path on %d ablated copies.", self.path_used, len(image_index))
        reference = clean_scores.double()[image_index]
        defined = reference != 0
        drops = torch.where(defined, (reference - ablated) / torch.where(defined, reference, 1.0), 0.0)
        return scattered(drops, image_index, channel_index, (batch, channels))

    def _fan_out_points(self, layer: nn.Module) -> list[tuple[str, nn.Module]]:
        """Where the copies may branch off: the layer's output, then the input of each enclosing module (not the model)."""
        name = next(found for found, module in self.layers if module is layer)
        parts = name.split(".")
        enclosing = [".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]
        return [("the layer", layer)] + [(f"{prefix!r}", self.model.get_submodule(prefix)) for prefix in enclosing]

    def _ablated_scores(
        self,
        call: ModelCall,
        layer: nn.Module,
        channel_dim: int,
        image_index: torch.Tensor,
        channel_index: torch.Tensor,
        target: torch.Tensor | Callable[[Any], torch.Tensor],
        clean_scores: torch.Tensor,
        chunk_rows: int,
        *,
        fan_at: nn.Module | None,
    ) -> torch.Tensor:
        """``(R,)`` float64 scores with each row's channel zeroed: copies from ``fan_at`` on, or full forwards (None)."""
        x = call.x
        found = torch.empty(image_index.shape[0], dtype=torch.float64, device=x.device)
        for row in self.chunks(image_index.shape[0], chunk_rows):
            row = row.to(x.device)
            images, ablated_channels = image_index[row], channel_index[row]
            if fan_at is not None:
                # The chunk's images go in once; a hook fans them out to the copies (at the layer's output or
                # an enclosing module's input), plus one unablated copy per image to check the pass against
                # the clean scores.
                inputs, local = torch.unique(images, return_inverse=True)
                check = torch.arange(len(inputs), device=x.device)
                fan_out = torch.cat((local, check))
                row_images = torch.cat((images, inputs))
            else:
                inputs, fan_out, row_images = images, torch.arange(len(images), device=x.device), images
            at_layer = fan_at is None or fan_at is layer
            with contextlib.ExitStack() as hooks:
                if fan_at is not None and not at_layer:
                    hooks.enter_context(_input_fanned_out(fan_at, fan_out))
                hooks.enter_context(
                    output_replaced(
                        layer,
                        _ablation(
                            fan_out if at_layer else torch.arange(len(fan_out), device=x.device),
                            ablated_channels,
                            channel_dim,
                        ),
                    )
                )
                chunk = call.rows(inputs)
                row_target = hooks.enter_context(scored_target(self.model, target, chunk))
                output = chunk.run(self.model)
                scores = row_scores(output, row_target, row_images, probabilities=False).double()
            if fan_at is not None:
                unablated, expected = scores[len(row) :], clean_scores.double()[inputs]
                if not bool(((unablated - expected).abs() <= 1e-4 * (1 + expected.abs())).all()):
                    raise _DownstreamRefused("the unablated copies did not reproduce the clean scores")
            found[row] = scores[: len(row)]
        return found


def _ablation(
    fan_out: torch.Tensor, ablated_channels: torch.Tensor, channel_dim: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer output's rows ``fan_out``, row i with channel ``ablated_channels[i]`` zeroed (rows past them kept whole)."""

    def ablate(tensor: torch.Tensor) -> torch.Tensor:
        copies = tensor.index_select(0, fan_out)  # a fresh tensor, so zeroing in place is safe
        rows = torch.arange(len(ablated_channels), device=tensor.device)
        copies.movedim(channel_dim, 1)[rows, ablated_channels] = 0
        return copies

    return ablate


@contextlib.contextmanager
def _input_fanned_out(module: nn.Module, fan_out: torch.Tensor) -> Iterator[None]:
    """For the block, ``module``'s first input goes in as its rows ``fan_out``."""

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise _DownstreamRefused("its input is not a tensor argument")
        return (inputs[0].index_select(0, fan_out), *inputs[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else type(error).__name__


def _channel_dim(raw_shape: tuple[int, ...], grid_shape: torch.Size) -> int:
    """Where the channels sit in the layer's own output: dim 1 (B, K, ...) or last (tokens, channels-last)."""
    channels = grid_shape[1]
    if len(raw_shape) == len(grid_shape) and tuple(raw_shape[1:]) == tuple(grid_shape[1:]):
        return 1
    if raw_shape[-1] == channels:
        return len(raw_shape) - 1
    raise CamkitError(
        f"Ablation-CAM zeroes channels of the layer's own output {tuple(raw_shape)}, but cannot find the "
        f"{channels} channels of the explained map in it; choose a layer whose output has them in dim 1 or last."
    )
