"""Turning a user's ``target`` into one differentiable score per image.

The score is what the explainer differentiates. For classifiers it is the raw
logit of a class (as in the Grad-CAM paper); for anything else the caller
passes a function from the model's output to ``(B,)`` scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .errors import CamkitError, CamkitTypeError

TargetSpec = int | Sequence[int] | torch.Tensor | Callable[[Any], torch.Tensor] | None

# Keys tried, in order, when a model returns a dict: Hugging Face classifiers
# say "logits" (CLIP's zero-shot scores "logits_per_image"), torchvision segmenters "out".
_LOGIT_KEYS = ("logits", "logits_per_image", "out", "output", "scores")
# Outputs that hold features, not scores: there is no class to pick, the caller says what to explain.
_EMBEDDING_KEYS = ("image_embeds", "pooler_output", "last_hidden_state", "embeddings")


def logits_of(output: Any) -> torch.Tensor:
    """The class-score tensor of a model output.

    A tensor is used as is; a tuple or list gives its first tensor; a dict
    (Hugging Face ``ModelOutput`` included) gives its
    ``logits``/``logits_per_image``/``out``/``output``/``scores`` entry; any
    other object with such an attribute gives that attribute.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in _LOGIT_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor):
                return value
        keys = sorted(map(str, output))
        embeddings = [key for key in _EMBEDDING_KEYS if key in keys]
        if embeddings:
            raise CamkitTypeError(
                f"The model returned embeddings ({', '.join(embeddings)}), not class scores. Pass "
                "target=callable(output) -> (B,) scores, for instance the cosine similarity of "
                f"output.{embeddings[0]} with a text or reference embedding."
            )
        raise CamkitTypeError(
            f"The model returned a dict with keys {keys} and none of "
            f"{list(_LOGIT_KEYS)} holds a tensor. Pass target=callable(output) -> (B,) scores "
            "that picks the score to explain."
        )
    for key in _LOGIT_KEYS[:2]:
        logits = getattr(output, key, None)
        if isinstance(logits, torch.Tensor):
            return logits
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    raise CamkitTypeError(
        f"Cannot find class scores in a model output of type {type(output).__name__}. "
        "Pass target=callable(output) -> (B,) scores that picks the score to explain."
    )


def scores_for(output: Any, target: TargetSpec, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image scores ``(B,)`` and the explained class indices ``(B,)``.

    The class indices are ``None`` when ``target`` is a callable: the caller
    chose a score that need not be a class.
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        scores = target(output)
        if not isinstance(scores, torch.Tensor):
            raise CamkitTypeError(
                f"The target callable returned {type(scores).__name__}; it must return a "
                f"tensor of {batch_size} scores, one per image."
            )
        scores = scores.reshape(-1) if scores.dim() == 2 and scores.shape[-1] == 1 else scores
        if scores.shape != (batch_size,):
            raise CamkitError(
                f"The target callable returned scores of shape {tuple(scores.shape)}; it must "
                f"return shape ({batch_size},), one score per image."
            )
        return scores, None

    logits = logits_of(output)
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise CamkitError(
            f"The model output has shape {tuple(logits.shape)}, not (batch={batch_size}, classes). "
            "For segmenters, detectors or other outputs pass target=callable(output) -> (B,) scores."
        )
    classes = class_indices(logits, target)
    return logits.gather(1, classes[:, None]).squeeze(1), classes


def contrastive_scores(
    logits: torch.Tensor,
    classes: torch.Tensor,
    ranks: Sequence[int],
    alpha: float,
    *,
    rivals: torch.Tensor | None = None,
    weighting: str = "softmax",
) -> torch.Tensor:
    """Finer-CAM's score ``(B,)``: z_c - alpha * sum_i q_i z_i over the rivals at ``ranks`` of |z_i - z_c|.

    q is the softmax over the rivals' logits, which equals the authors'
    p_i / sum_j p_j (p the softmax over all classes) without their 1e-9;
    ``weighting="mean"`` takes q_i = 1 / n instead (torchcam's rule).
    Rank 0 is the target itself (first whatever ties); ranks past the last
    class are dropped, and with none left the score is the target's logit.
    ``rivals``: explicit ``(B, n)`` rival classes instead of the ranks.
    """
    target_logits = logits.gather(1, classes[:, None]).squeeze(1)
    if rivals is None:
        kept = [rank for rank in ranks if rank < logits.shape[1]]
        if not kept:
            return target_logits
        distance = (logits.detach() - target_logits.detach()[:, None]).abs()
        distance.scatter_(1, classes[:, None], -1.0)
        rivals = distance.argsort(dim=1, stable=True)[:, kept]
    rival_logits = logits.gather(1, rivals)
    weights = (
        rival_logits.softmax(dim=1) if weighting == "softmax" else torch.full_like(rival_logits, 1 / rivals.shape[1])
    )
    return target_logits - alpha * (weights * rival_logits).sum(dim=1)


def class_indices(logits: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """``(B,)`` int64 class indices on the logits' device, validated."""
    batch_size, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if _holds_bool(target):
        raise CamkitTypeError(
            "target holds a bool; bools are not class indices. Pass None, an int, or one int per image."
        )
    if isinstance(target, int):
        classes = torch.full((batch_size,), target, dtype=torch.long, device=logits.device)
    else:
        if isinstance(target, torch.Tensor) and target.is_meta:
            raise CamkitError(
                "target is a tensor on the meta device, which holds no values; pass class indices "
                "on the CPU or on the model's device."
            )
        try:
            classes = torch.as_tensor(target, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise CamkitTypeError(
                f"target must be None, an int, a class name, one int (or name) per image, a callable, or one "
                f"callable per image; got {type(target).__name__}."
            ) from error
        if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.dtype.is_complex:
            raise CamkitTypeError(f"target class indices must be integers, got dtype {classes.dtype}.")
        classes = classes.to(torch.long).reshape(-1) if classes.dim() == 0 else classes.to(torch.long)
        if classes.dim() == 2 and classes.shape[1] == 1:  # a column of classes, (B, 1): one per image
            classes = classes.reshape(-1)
        if classes.dim() == 1 and classes.numel() == 1 and batch_size != 1:
            classes = classes.expand(batch_size)
        if classes.shape != (batch_size,):
            raise CamkitError(
                f"target has {classes.numel()} class indices for a batch of {batch_size} images (shape "
                f"{tuple(classes.shape)}); give one int for all images or exactly one per image, shape ({batch_size},)."
            )
    out_of_range = (classes < 0) | (classes >= num_classes)
    if bool(out_of_range.any()):
        bad = classes[out_of_range].tolist()
        raise CamkitError(
            f"target class {bad[0] if len(bad) == 1 else bad} is out of range: the model has "
            f"{num_classes} classes, so valid indices are 0..{num_classes - 1}."
        )
    return classes


def _holds_bool(target: Any) -> bool:
    # torch.as_tensor([False, 0]) is an int64 tensor [0, 0]: check the items themselves.
    if isinstance(target, torch.Tensor):
        return target.dtype == torch.bool
    if isinstance(target, (list, tuple)):
        return any(_holds_bool(item) or type(item).__name__ == "bool_" for item in target)
    return isinstance(target, bool) or getattr(getattr(target, "dtype", None), "kind", "") == "b"


class NonFiniteScores(CamkitError):
    """The explained score is NaN or infinite; ``rows`` are the offending rows of the scored batch."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(non_finite_message(rows))
        self.rows = rows


def non_finite_message(images: list[int]) -> str:
    return (
        f"The explained score is NaN or infinite for image(s) {images[:8]} of the batch. Check the model's "
        "weights and that the input is normalised the way the model expects."
    )


class PerImageTargets:
    """One callable per image, pytorch-grad-cam's convention: callable ``i`` scores image ``i``'s row of the output.

    ``explainer(x, [f0, f1, ...])`` is turned into this. Each callable gets its
    image's part of the output (a logits row, or a detector's dict) and returns
    one score. Rows of copies (augmentation, noisy or perturbed copies) are
    scored by their image's callable: :meth:`rows` reorders the callables for
    the rows a method runs.
    """

    def __init__(self, callables: Sequence[Callable[[Any], Any]]) -> None:
        self.callables = list(callables)

    def rows(self, image_index: torch.Tensor) -> PerImageTargets:
        """The callables for rows that copy the images ``image_index`` (of a batch that may itself hold copies)."""
        images = len(self.callables)
        return PerImageTargets([self.callables[int(index) % images] for index in image_index.tolist()])

    def __call__(self, output: Any) -> torch.Tensor:
        parts = _per_row(output)
        images = len(self.callables)
        if len(parts) % images:
            raise CamkitError(
                f"{images} per-image target callables for a model output of {len(parts)} rows; "
                "give one callable per image of the batch."
            )
        # Copies of the batch are copy-major: row r copies image r % B.
        scores = [_one_score(self.callables[row % images](part), row) for row, part in enumerate(parts)]
        return torch.stack(scores)


def _per_row(output: Any) -> Sequence[Any]:
    if isinstance(output, (list, tuple)) and output and all(isinstance(item, Mapping) for item in output):
        return output  # a detector's list of per-image dicts
    logits = logits_of(output)
    return list(logits.unbind(0)) if logits.dim() else [logits]


def _one_score(score: Any, row: int) -> torch.Tensor:
    if not isinstance(score, torch.Tensor):
        raise CamkitTypeError(
            f"the target callable of row {row} returned {type(score).__name__}; it must return "
            "a tensor score computed from the output it was given (so that it has a gradient)."
        )
    if score.numel() != 1:
        raise CamkitError(
            f"the target callable of row {row} returned {score.numel()} values; a per-image target "
            "callable returns one score for its image."
        )
    return score.reshape(())


def as_target(target: Any, class_names: Sequence[str] | None = None) -> TargetSpec:
    """A user's ``target`` in the form the pipeline takes: class names to indices, a list of callables to one."""
    if isinstance(target, str) or (
        isinstance(target, (list, tuple)) and target and all(isinstance(item, str) for item in target)
    ):
        return _named_classes(target, class_names)
    if isinstance(target, (list, tuple)) and target and any(callable(item) for item in target):
        if not all(callable(item) and not isinstance(item, torch.Tensor) for item in target):
            raise CamkitTypeError(
                "target mixes callables with other values; give one callable per image, or class indices only."
            )
        return PerImageTargets(target)
    # Anything else passes through as given; scores_for checks it against the model's output.
    return cast(TargetSpec, target)


def _named_classes(target: str | Sequence[str], class_names: Sequence[str] | None) -> int | list[int]:
    names = list(class_names) if class_names is not None else []
    wanted = [target] if isinstance(target, str) else list(target)
    if not names:
        raise CamkitError(
            f"target={target!r} names a class, but this model has no class names: pass class_names= (for "
            "torchvision, weights.meta['categories']) to the explainer, or target a class index."
        )
    missing = [name for name in wanted if name not in names]
    if missing:
        import difflib

        close = difflib.get_close_matches(missing[0], names, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise CamkitError(f"the model has no class named {missing[0]!r}{hint}")
    indices = [names.index(name) for name in wanted]
    return indices[0] if isinstance(target, str) else indices


def model_class_names(model: Any) -> list[str] | None:
    """Class names a model carries: a ``class_names`` attribute, or a Hugging Face config's ``id2label``."""
    names = getattr(model, "class_names", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
        return list(names)
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(labels, Mapping) and labels:
        try:
            return [str(labels[index]) for index in range(len(labels))]
        except KeyError:
            return None
    return None


def check_finite_scores(scores: torch.Tensor) -> None:
    """Refuse NaN or infinite explained scores: their gradients are meaningless, the map would be empty or NaN."""
    finite = torch.isfinite(scores.detach())
    if not bool(finite.all()):
        raise NonFiniteScores(torch.nonzero(~finite).flatten().tolist())


class SegmentationTarget:
    """A segmenter's evidence for one class: the sum of its logits over a mask, per image.

    ``category`` is one class for all images or one per image.
    ``mask`` is ``(H, W)`` or ``(B, H, W)`` (``(D, H, W)`` for volumes) at the output's resolution; without
    one, the pixels the model itself assigns to ``category`` are used. Accepts
    torchvision's ``{"out": logits}`` dicts and plain ``(B, C, H, W)`` logits.
    """

    def __init__(self, category: int | Sequence[int] | torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.category, self.mask = category, mask

    def __call__(self, output: Any) -> torch.Tensor:
        logits = logits_of(output)
        if logits.dim() not in (4, 5):
            raise CamkitError(
                f"SegmentationTarget needs (B, classes, H, W) or (B, classes, D, H, W) logits, got {tuple(logits.shape)}."
            )
        batch, classes = logits.shape[:2]
        categories = class_indices(logits.new_zeros(batch, classes), self.category)  # validated, one per image
        shape = (batch, 1, *logits.shape[2:])
        class_logits = logits.gather(1, categories.reshape(-1, *([1] * (logits.dim() - 1))).expand(shape)).squeeze(1)
        if self.mask is None:
            mask = (logits.argmax(dim=1) == categories.reshape(-1, *([1] * (logits.dim() - 2)))).to(logits.dtype)
        else:
            mask = self.mask.to(device=logits.device, dtype=logits.dtype).expand(batch, *logits.shape[2:])
        return (class_logits * mask).flatten(1).sum(dim=1)


class MultiLabelTarget:
    """One label's sigmoid probability among many independent labels (e.g. chest X-ray findings)."""

    def __init__(self, label: int | Sequence[int] | torch.Tensor) -> None:
        self.label = label

    def __call__(self, output: Any) -> torch.Tensor:
        logits = logits_of(output)
        labels = class_indices(logits, self.label)
        return torch.sigmoid(logits.gather(1, labels[:, None]).squeeze(1))


class DetectionTarget:
    """A detector's score for the detection that best matches a given box and label, per image.

    For torchvision detectors, whose output is a list of dicts with
    ``boxes``, ``labels`` and ``scores``: among detections of ``labels[b]``,
    the one with the highest IoU to ``boxes[b]`` (at least ``min_iou``) gives
    its score; an image with no such detection scores 0 (its map is then empty).
    """

    def __init__(self, boxes: torch.Tensor, labels: Sequence[int] | torch.Tensor, min_iou: float = 0.5) -> None:
        self.boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(labels).reshape(-1)
        self.min_iou = float(min_iou)

    def __call__(self, output: Any) -> torch.Tensor:
        from torchvision.ops import box_iou

        if not isinstance(output, (list, tuple)) or not all(isinstance(item, Mapping) for item in output):
            raise CamkitTypeError("DetectionTarget expects a detector's list of dicts with boxes, labels and scores.")
        if len(output) != len(self.boxes):
            raise CamkitError(f"DetectionTarget has {len(self.boxes)} boxes for a batch of {len(output)} images.")
        scores = []
        for detections, box, label in zip(output, self.boxes, self.labels.tolist()):
            # A Python loop over images: each image has its own number of detections.
            same_label = detections["labels"] == label
            # The IoU only chooses the detection: computed without autograd (float() of a tensor that
            # requires grad makes torch warn), the score it picks keeps its gradient.
            overlap = box_iou(box[None].to(detections["boxes"].device), detections["boxes"].detach())[0]
            overlap = torch.where(same_label & (overlap >= self.min_iou), overlap, -1.0)
            if detections["scores"].numel() == 0 or float(overlap.max()) < 0:
                scores.append(detections["scores"].sum() * 0.0)
            else:
                scores.append(detections["scores"][overlap.argmax()])
        return torch.stack(scores)


def target_rows(target: TargetSpec, index: torch.Tensor) -> TargetSpec:
    """The target for rows ``index`` of the batch (copies or a pass): class tensors and per-image targets follow their images.

    A target that holds per-image data (:class:`CaptionTarget`'s tokens) says
    so with a ``rows(index)`` method; other callables and single ints are the same for every row.
    """
    if isinstance(target, torch.Tensor):
        return target.to(index.device)[index] if target.dim() and target.shape[0] > 1 else target
    rows = getattr(target, "rows", None)
    return rows(index) if callable(rows) else target


class CaptionTarget:
    """A teacher-forced caption's log-probability: the sum of log-softmax(logits)[t, tokens[t]] over ``positions``.

    For any model whose output has ``logits`` ``(B, T, V)`` aligned with
    ``tokens`` ``(B, T)`` (or ``(T,)`` for every image): ``logits[:, t]``
    predicts ``tokens[:, t]``. Teacher forcing goes through ``inputs=``
    (e.g. ``decoder_input_ids`` = the caption shifted right behind the start
    token). ``positions`` (an int or a list of them; None: all) picks the
    words explained: one position explains one word.
    """

    def __init__(self, tokens: torch.Tensor | Sequence[int], positions: int | Sequence[int] | None = None) -> None:
        self.tokens = torch.as_tensor(tokens)
        if self.tokens.dim() not in (1, 2) or self.tokens.dtype.is_floating_point or self.tokens.dtype == torch.bool:
            raise CamkitTypeError(
                f"CaptionTarget tokens must be integer token ids (T,) or (B, T), got "
                f"{self.tokens.dtype} {tuple(self.tokens.shape)}."
            )
        length = self.tokens.shape[-1]
        chosen = range(length) if positions is None else [positions] if isinstance(positions, int) else positions
        self.positions = torch.as_tensor(list(chosen), dtype=torch.long)
        if self.positions.numel() == 0 or bool(((self.positions < -length) | (self.positions >= length)).any()):
            raise CamkitError(
                f"CaptionTarget positions {positions!r} must be caption positions in -{length}..{length - 1}."
            )

    def rows(self, index: torch.Tensor) -> CaptionTarget:
        if self.tokens.dim() == 1 or self.tokens.shape[0] == 1:
            return self
        return CaptionTarget(self.tokens.to(index.device)[index], self.positions.tolist())

    def __call__(self, output: Any) -> torch.Tensor:
        logits = logits_of(output)
        if logits.dim() != 3 or logits.shape[1] != self.tokens.shape[-1]:
            raise CamkitError(
                f"CaptionTarget needs logits (B, T={self.tokens.shape[-1]}, vocabulary) aligned with its tokens, got "
                f"{tuple(logits.shape)}. Pass the caption so far through inputs= (e.g. decoder_input_ids)."
            )
        tokens = self.tokens.to(logits.device).expand(logits.shape[0], -1)
        positions = self.positions.to(logits.device) % logits.shape[1]
        chosen_logits = logits[:, positions].float().log_softmax(dim=-1)
        return chosen_logits.gather(2, tokens[:, positions, None]).squeeze(2).sum(dim=1)


class NeuronTarget:
    """An intermediate layer's activation as the score: a channel (or several, summed), spatially averaged, or one neuron.

    ``layer`` is a dotted module name or the module; its output is laid out
    as camkit lays out target layers (tokens on their grid, channels-last
    permuted). ``channel``: an int or a list of them (None: all channels);
    ``position``: a grid position ``(i, j)`` for one neuron (None: the mean
    over positions). The layer is hooked by the explainer's capture for that
    call only; explaining an earlier layer shows what drives the neuron.
    """

    def __init__(
        self, layer: str | nn.Module, channel: int | Sequence[int] | None = None, position: Sequence[int] | None = None
    ) -> None:
        if not isinstance(layer, (str, nn.Module)):
            raise CamkitTypeError(f"NeuronTarget layer must be a module name or a module, got {type(layer).__name__}.")
        self.layer = layer
        self.channels = (
            None
            if channel is None
            else torch.as_tensor([channel] if isinstance(channel, int) else list(channel), dtype=torch.long)
        )
        self.position = None if position is None else tuple(int(i) for i in position)

    def scores(self, activation: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores from the layer's activation in grid layout ``(B, K, *grid)``."""
        count = activation.shape[1]
        if self.channels is not None and bool(((self.channels < 0) | (self.channels >= count)).any()):
            raise CamkitError(
                f"NeuronTarget channel {self.channels.tolist()} is out of range: the layer has "
                f"{count} channels (0..{count - 1})."
            )
        chosen = activation if self.channels is None else activation[:, self.channels.to(activation.device)]
        if self.position is None:
            return chosen.flatten(2).mean(dim=2).sum(dim=1)
        grid = tuple(activation.shape[2:])
        if len(self.position) != len(grid) or any(not 0 <= i < n for i, n in zip(self.position, grid)):
            raise CamkitError(f"NeuronTarget position {self.position} is not on the layer's grid {grid}.")
        neuron: tuple[slice | int, ...] = (slice(None), slice(None), *self.position)
        return chosen[neuron].sum(dim=1)

    def __call__(self, output: Any) -> torch.Tensor:
        raise CamkitError(
            "NeuronTarget scores a layer inside the model, not its output: pass it as an explainer's "
            "target (the explainer hooks the layer for that call)."
        )
