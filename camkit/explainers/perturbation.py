"""What the perturbation methods share: one clean pass, then perturbed forwards in memory-bounded chunks.

Score-CAM and its variants mask the input with each channel, Ablation-CAM
zeroes each channel at the layer; either way every (image, channel) pair is a
row of a batch, the rows of all images run together, and a chunk holds as
many rows as ``memory_budget`` allows. The weights land in a
:class:`ScoredCapture`, so the shared pipeline (sum, ReLU, upsample,
normalise) does the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..calls import ModelCall
from ..capture import Capture, capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..layouts import patch_size_of
from ..ops.perturbation import rows_per_chunk
from ..targets import PerImageTargets, TargetSpec, check_finite_scores, logits_of, scores_for, target_rows
from .base import ChannelWeightedExplainer

# Bytes of perturbed copies (and their forward's tensors) one call may hold:
# 2 GiB leaves room on a 16 GB GPU next to a large model, and on a 24 GiB CPU
# machine next to the model and the data loader.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3

# A no-grad forward holds the input, the current output and, through residual
# and concatenating blocks, a few more tensors of the largest size at once.
_LIVE_TENSORS = 4

# On the CPU a chunk is also kept small enough that its largest tensor stays under
# this size. torch's CPU allocator has no cache: glibc serves a large block with a
# fresh mmap that the kernel zero-fills page by page and unmaps on free, on every
# chunk. With 2 GiB chunks SS-CAM on the demo model (8 images, 64x64) spent 57 s
# in the kernel for 124 s of work, IS-CAM 14.8 s for 36.6 s. Measured on IS-CAM
# (2 images, 4 samples): a 64 MiB cap 1.35 s system for 3.4 s user, 16 MiB
# 0.38 s, 8 MiB 0.00 s for 3.5 s user, 1 MiB 0.00 s but 4.4 s user (batches too
# small for the convolutions).
CPU_CHUNK_TENSOR_BYTES = 8 * 1024**2

Progress = Callable[[int, int], None]


@dataclass
class ScoredCapture(Capture):
    """A clean capture together with the channel weights its perturbed forwards gave, ``(B, K)``."""

    channel_weights: torch.Tensor | None = None


class PerturbationExplainer(ChannelWeightedExplainer):
    """Base of the methods that weight channels by scores of perturbed forwards (no gradients).

    Args:
        memory_budget: bytes the perturbed copies of one chunk may take
            (estimated from the tensor sizes of the clean pass); a smaller budget
            gives more, smaller chunks and the same maps.
        top_channels: score only each image's ``top_channels`` channels of
            largest activation norm (the others get weight 0); None scores all.
        progress: called as ``progress(rows_done, rows_total)`` after each
            chunk, e.g. ``tqdm``'s ``lambda done, total: bar.update(...)``.
    """

    uses_gradients = False
    uses: ClassVar[str] = "perturbed forwards"  # what `camkit methods` lists

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        top_channels: int | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
            raise CamkitError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}.")
        if top_channels is not None and (
            isinstance(top_channels, bool) or not isinstance(top_channels, int) or top_channels < 1
        ):
            raise CamkitError(f"top_channels must be a positive int or None (all channels), got {top_channels!r}.")
        if progress is not None and not callable(progress):
            raise CamkitTypeError("progress must be a function progress(rows_done, rows_total) or None.")
        self.memory_budget, self.top_channels, self.progress = memory_budget, top_channels, progress

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        """The clean pass, then each layer's channel weights from its perturbed forwards."""
        with self._watching_sizes(call.batch) as probes:  # the clean pass doubles as the memory probe
            cleans = capture(
                self.model,
                self.layers,
                call,
                target,
                with_gradients=False,
                reshape=self.reshape,
                patch_size=patch_size_of(self.model),
            )
        # Every perturbed copy is scored for the class chosen on the clean image.
        row_target: torch.Tensor | Callable[[Any], torch.Tensor]
        if callable(target) and not isinstance(target, torch.Tensor):
            row_target = target
        elif cleans[0].classes is not None:
            row_target = cleans[0].classes
        else:
            raise CamkitError(
                f"{type(self).__name__} needs a class to score; the model's output has no class scores. "
                "Pass target=callable(output) -> one score per row of the output."
            )
        check_finite_scores(cleans[0].scores)  # NaN scores would give NaN weights and a blank map
        scored: list[Capture] = []
        for clean, (name, module) in zip(cleans, self.layers):
            with torch.no_grad():
                weights = self.score_channels(call, clean, module, probes[name], row_target)
            _check_finite_weights(weights, type(self).__name__)
            values = {field.name: getattr(clean, field.name) for field in fields(Capture)}
            scored.append(ScoredCapture(**values, channel_weights=weights))
        return scored

    def channel_weights(self, captured: Capture) -> torch.Tensor:
        if not isinstance(captured, ScoredCapture) or captured.channel_weights is None:
            raise CamkitError(f"{type(self).__name__} weights come from its own capture step; call the explainer.")
        return captured.channel_weights.float()

    def score_channels(
        self,
        call: ModelCall,
        captured: Capture,
        layer: nn.Module,
        probe: Probe,
        target: torch.Tensor | Callable[[Any], torch.Tensor],
    ) -> torch.Tensor:
        """``(B, K)`` channel weights from perturbed forwards (rows of ``call``), in chunks that fit ``memory_budget``.

        The forwards run inside :func:`camkit.capture.scored_target` so that a NeuronTarget can be read.
        """
        raise NotImplementedError(f"{type(self).__name__} must define score_channels.")

    # Helpers for the methods.
    def chunks(self, total_rows: int, chunk_rows: int) -> Iterator[torch.Tensor]:
        """Row indices ``chunk_rows`` at a time; reports progress after each chunk."""
        for start in range(0, total_rows, chunk_rows):
            stop = min(start + chunk_rows, total_rows)
            yield torch.arange(start, stop)
            if self.progress is not None:
                self.progress(stop, total_rows)

    def rows_per_chunk(self, x: torch.Tensor, largest_per_image: int, *, with_input: bool = True) -> int:
        """Perturbed copies per forward within ``memory_budget``: the masked copy and its mask, and the forward's live tensors.

        On the CPU also at most ``CPU_CHUNK_TENSOR_BYTES`` in the chunk's largest tensor (see there).
        """
        copy_bytes = 2 * x[0].numel() * x.element_size() if with_input else 0
        largest = max(largest_per_image, x[0].numel() * x.element_size() if with_input else 0)
        ceiling = max(1, CPU_CHUNK_TENSOR_BYTES // max(1, largest)) if x.device.type == "cpu" else None
        return rows_per_chunk(self.memory_budget, copy_bytes + _LIVE_TENSORS * largest_per_image, ceiling)

    @contextlib.contextmanager
    def _watching_sizes(self, batch: int) -> Iterator[dict[str, Probe]]:
        """Every module watched for the block: per-image tensor sizes overall and from each target layer on."""
        probes: dict[str, Probe] = {}
        names = {id(module): name for name, module in self.layers}
        largest = [0]
        shapes: dict[str, tuple[int, ...]] = {}
        after: dict[str, int] = {}

        def record(module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None:
                return
            size = tensor.numel() * tensor.element_size() // batch
            largest[0] = max(largest[0], size)
            if id(module) in names:
                shapes[names[id(module)]] = tuple(tensor.shape)
                after.setdefault(names[id(module)], 0)
            for name in after:  # every module that finishes after a target layer is downstream of it
                after[name] = max(after[name], size)

        handles = [module.register_forward_hook(record) for module in self.model.modules()]
        try:
            yield probes
            probes.update({name: Probe(largest[0], shapes[name], after[name]) for name in shapes})
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True)
class Probe:
    """Per-image sizes seen in the clean pass: the largest tensor anywhere, the layer's raw output shape, the largest from the layer on."""

    largest: int
    layer_shape: tuple[int, ...]
    largest_downstream: int


def _check_finite_weights(weights: torch.Tensor, method: str) -> None:
    """Refuse weights from NaN or infinite scores of perturbed copies, naming the batch's images."""
    finite = torch.isfinite(weights).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise CamkitError(
            f"{method}: the model's scores of the perturbed copies of image(s) {bad[:8]} of the batch are NaN or "
            "infinite. Check the model's weights and that the input is normalised the way the model expects."
        )


def first_tensor(output: Any) -> torch.Tensor | None:
    """A module output's tensor: itself, or the first item of a tuple or list (as capture reads it)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def output_replaced(layer: nn.Module, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """For the block, ``layer``'s output tensor goes on as ``change(output)``; the hook is removed afterwards."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return change(output)
        return type(output)((change(output[0]), *output[1:]))

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def row_scores(
    output: Any,
    target: torch.Tensor | Callable[[Any], torch.Tensor],
    image_index: torch.Tensor,
    *,
    probabilities: bool,
) -> torch.Tensor:
    """``(R,)`` scores of the perturbed rows: each row's class (its softmax probability or raw logit), or the callable's score."""
    rows = image_index.shape[0]
    if isinstance(target, PerImageTargets):  # each perturbed row scored by its image's callable
        return scores_for(output, target.rows(image_index), rows)[0]
    if callable(target) and not isinstance(target, torch.Tensor):
        return scores_for(output, target_rows(target, image_index), rows)[0]
    logits = logits_of(output)
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise CamkitError(
            f"The model returned {tuple(logits.shape)} for {rows} perturbed copies; a perturbation method needs "
            "(rows, classes) logits or target=callable(output) -> one score per row."
        )
    scores = logits.float().softmax(dim=1) if probabilities else logits
    return scores.gather(1, target[image_index][:, None]).squeeze(1)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "PerturbationExplainer",
    "Probe",
    "Progress",
    "ScoredCapture",
    "first_tensor",
    "output_replaced",
    "row_scores",
]
