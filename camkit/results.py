"""The rich result of an explanation: maps plus what the model said. Data only; :mod:`camkit.viz` draws it.

An :class:`Explanation` shows itself in Jupyter (``_repr_png_``), with
``.figure()``, ``.show()`` and ``.save(path)``. The drawing code lives in
``camkit.viz``, which installs itself as the renderer when it is imported
(``import camkit`` does so); this module never imports it, so the core does
not depend on the drawing side or on matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from .errors import CamkitError, CamkitTypeError
from .ops.images import unnormalize

_renderer: dict[str, Callable[..., Any]] = {}
_Result = TypeVar("_Result", bound="_Drawn")


def set_renderer(
    *, figure: Callable[..., Any], show: Callable[..., None], save: Callable[..., Path], kind: str = ""
) -> None:
    """Install the functions that draw an :class:`Explanation` (``kind="detection"``: a
    :class:`DetectionExplanation`); ``camkit.viz`` calls this on import."""
    _renderer.update({f"{kind}figure": figure, f"{kind}show": show, f"{kind}save": save})


class _Drawn:
    """What both result types share: a display image, class names, and drawing through camkit.viz."""

    images: torch.Tensor
    class_names: Sequence[str] | None
    display: torch.Tensor | None
    _drawing: ClassVar[str] = ""  # which renderer draws it (set_renderer's kind)
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # both result types are dataclasses: replace() takes them

    def __len__(self) -> int:
        """Images in the result; each result type counts its own."""
        raise NotImplementedError

    def with_display(
        self: _Result,
        images: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> _Result:
        """The same result drawn over ``images`` (or the input un-normalised with mean/std), with class names.

        ``images``: a ``(B, 3, H, W)`` batch or a list of ``(3, H, W)`` images of any sizes (the ``originals``
        ``camkit.load_images`` returns), uint8 in 0..255 or floats in [0, 1]; each is resized to the maps.
        """
        if images is None and mean is not None and std is not None:
            images = unnormalize(self.images, mean, std)
        elif images is not None:
            images = display_batch(images, len(self), tuple(self.images.shape[2:]))
        return replace(
            self,
            display=images if images is not None else self.display,
            class_names=class_names if class_names is not None else self.class_names,
        )

    def class_name(self, index: int) -> str:
        """A class index as its name when ``class_names`` has one."""
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    def figure(self, **options: Any) -> Any:
        """A matplotlib figure: each image beside its overlay, captioned (see ``camkit.viz.explanation_figure``)."""
        return self._render("figure")(self, **options)

    def _repr_png_(self) -> bytes:
        """Jupyter shows the result as its figure."""
        png: bytes = self.figure()._repr_png_()
        return png

    def show(self, **options: Any) -> None:
        """Display inline in IPython/Jupyter, else in a matplotlib window."""
        self._render("show")(self, **options)

    def save(self, path: str | Path, **options: Any) -> Path:
        """``"x.png"``: the figure (any format matplotlib infers). ``"folder/"``: per-image maps (npy),
        overlays (PNG) and ``explanation.json`` (method, layer, targets, predictions, versions)."""
        saved: Path = self._render("save")(self, Path(path), **options)
        return saved

    def _render(self, what: str) -> Callable[..., Any]:
        if self._drawing + what not in _renderer:
            raise CamkitError(
                f"Drawing an {type(self).__name__} needs camkit.viz; import camkit (or camkit.viz) first."
            )
        return _renderer[self._drawing + what]


@dataclass(repr=False)
class Explanation(_Drawn):
    """Everything one ``explainer.explain(x)`` call produced, all on ``x``'s device.

    ``maps`` is what ``explainer(x)`` returns; ``layer_maps`` are the same maps
    at the target layer's resolution (after ReLU, before upsampling and
    normalisation). ``targets`` holds the explained class of each image (None
    when the target was a callable); ``predictions`` and ``probabilities``
    the model's top class and its softmax probability (None when the model's
    output has no class scores). ``channel_weights`` ``(B, K)`` are the
    weights w_k a channel-weighted method summed the first layer's feature
    maps with (0 outside ``channels=``; None for other methods);
    :meth:`top_channels` ranks them, and ``channel_activations`` ``(B, K, *grid)``
    holds the feature maps they weigh (the figure draws the top channels' maps). The pixel methods (saliency, guided
    backprop, integrated gradients, ...) also fill ``attributions``: the
    signed, raw attribution of every input value, shaped like ``images``
    (FullGrad's has one channel); their ``maps`` are its per-image min-max
    normalised reduction over channels.
    """

    images: torch.Tensor  # (B, C, H, W) the explained input
    maps: torch.Tensor  # (B, H, W) in [0, 1]
    layer_maps: torch.Tensor  # (B, h, w)
    scores: torch.Tensor  # (B,) the explained scores
    targets: torch.Tensor | None  # (B,)
    predictions: torch.Tensor | None  # (B,)
    probabilities: torch.Tensor | None  # (B,)
    method: str
    layer: str
    uses_gradients: bool = True
    class_specific: bool = True  # False: the map ignores the target, which only names a class

    class_names: Sequence[str] | None = None
    display: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], what to draw under the maps
    channel_weights: torch.Tensor | None = None  # (B, K) for channel-weighted methods
    attributions: torch.Tensor | None = None  # (B, C, H, W) signed, raw; pixel methods only
    # (B, K, *grid): the first layer's feature maps that channel_weights weigh (channel-weighted methods only)
    channel_activations: torch.Tensor | None = None

    def top_channels(self, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's ``k`` channels of largest weight, largest first: indices and weights, ``(B, k)`` each."""
        if self.channel_weights is None:
            raise CamkitError(
                f"{self.method} does not weight channels, so there are no top channels; use a "
                "channel-weighted method (Grad-CAM, Grad-CAM++, Score-CAM, ...)."
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CamkitError(f"k must be a positive int, got {k!r}.")
        weights, indices = self.channel_weights.topk(min(k, self.channel_weights.shape[1]), dim=1)
        return indices, weights

    def __len__(self) -> int:
        return self.maps.shape[0]

    def __repr__(self) -> str:
        size = "x".join(map(str, self.maps.shape[1:]))
        grid = "x".join(map(str, self.layer_maps.shape[1:]))
        targets = "callable" if self.targets is None else _short(self.targets.tolist())
        return (
            f"Explanation(method={self.method!r}, layer={self.layer!r}, images={len(self)}, maps={size}, "
            f"layer_maps={grid}, targets={targets}, device={self.maps.device})"
        )


@dataclass(repr=False)
class DetectionExplanation(_Drawn):
    """One map per detection, from ``explainer.explain_detections(x)``; all on ``x``'s device.

    Per image ``b``: ``boxes[b]`` ``(N_b, 4)`` xyxy in input pixels, ``labels[b]``
    and ``scores[b]`` ``(N_b,)`` (the explained score: a class confidence or
    probability), ``maps[b]`` ``(N_b, H, W)`` in [0, 1], highest score first.
    ``keys[b]`` says which anchor (YOLO), query (DETR) or list entry
    (torchvision) each detection is; -1 for a given box no detection matched
    (score 0, empty map). ``family`` names the detector's family.
    """

    _drawing: ClassVar[str] = "detection"

    images: torch.Tensor  # (B, C, H, W) the explained input
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    scores: list[torch.Tensor]
    maps: list[torch.Tensor]
    keys: list[torch.Tensor]
    method: str
    layer: str
    family: str
    class_names: Sequence[str] | None = None
    display: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], what to draw under the maps

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_detections(self) -> int:
        return sum(int(labels.shape[0]) for labels in self.labels)

    def combined(self) -> torch.Tensor:
        """``(B, H, W)``: each pixel's largest map over the image's detections (zeros for an image with none)."""
        return torch.stack(
            [maps.amax(dim=0) if maps.shape[0] else maps.new_zeros(maps.shape[1:]) for maps in self.maps]
        )

    def __repr__(self) -> str:
        counts = _short([int(labels.shape[0]) for labels in self.labels])
        return (
            f"DetectionExplanation(method={self.method!r}, layer={self.layer!r}, family={self.family!r}, "
            f"images={len(self)}, detections={counts}, device={self.images.device})"
        )


def display_batch(images: Any, count: int, size: tuple[int, ...]) -> torch.Tensor:
    """Images to draw under ``count`` maps of ``size``: float ``(B, 3, *size)`` in [0, 1], from uint8 or floats."""
    items = list(images) if isinstance(images, (list, tuple)) else None
    if items is None and not isinstance(images, torch.Tensor):
        raise CamkitTypeError(
            f"display images must be a tensor (B, 3, H, W) or a list of (3, H, W) tensors, got {type(images).__name__}."
        )
    if items is None:
        items = list(images.unbind(0)) if images.dim() == len(size) + 2 else []
    if len(items) != count or not all(
        isinstance(item, torch.Tensor) and item.dim() == len(size) + 1 and item.shape[0] in (1, 3) for item in items
    ):
        raise CamkitError(
            f"with_display needs {count} images of shape (3, H, W) or (1, H, W), one per map; got "
            f"{len(items)} of shapes {[tuple(getattr(item, 'shape', ())) for item in items][:3]}."
        )
    mode = "bilinear" if len(size) == 2 else "trilinear"
    shown = []
    for item in items:
        # uint8 (what decoders and camkit.load_images give) is 0..255; floats are taken as [0, 1].
        image = item.float() / 255 if item.dtype == torch.uint8 else item.float()
        if tuple(image.shape[1:]) != size:
            image = F.interpolate(image[None], size=size, mode=mode, align_corners=False, antialias=len(size) == 2)[0]
        shown.append(image.expand(3, *image.shape[1:]).clamp(0, 1))
    return torch.stack(shown)


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"


@dataclass(repr=False)
class FactorizationExplanation(Explanation):
    """Deep Feature Factorization's result: an :class:`Explanation` plus the concepts the batch was factorised into.

    ``concept_maps`` ``(B, n, H, W)`` in [0, 1] (each normalised on its own);
    ``concepts`` ``(K, n)``: each concept's embedding in the layer's channel
    space; ``concept_scores`` ``(n, classes)``: the head applied to each
    concept (None without a head). ``maps`` is, per image, the map of the
    concept that scores the explained class highest (without a head: of the
    concept with the most energy in that image).
    """

    concept_maps: torch.Tensor | None = None
    concepts: torch.Tensor | None = None
    concept_scores: torch.Tensor | None = None


__all__ = ["DetectionExplanation", "Explanation", "FactorizationExplanation", "set_renderer"]
