"""The rich result of an explanation: maps plus what the model said. Data only; :mod:`camkit.viz` draws it.

An :class:`Explanation` shows itself in Jupyter (``_repr_png_``), with
``.figure()``, ``.show()`` and ``.save(path)``. The drawing code lives in
``camkit.viz``, which installs itself as the renderer when it is imported
(``import camkit`` does so); this module never imports it, so the core does
not depend on the drawing side or on matplotlib.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import CamkitError, CamkitTypeError
from .ops.images import unnormalize

_renderer: dict[str, Callable[..., Any]] = {}


def set_renderer(*, figure: Callable[..., Any], show: Callable[..., None], save: Callable[..., Path]) -> None:
    """Install the functions that draw an :class:`Explanation` (``camkit.viz`` calls this on import)."""
    _renderer.update(figure=figure, show=show, save=save)


@dataclass(repr=False)
class Explanation:
    """Everything one ``explainer.explain(x)`` call produced, all on ``x``'s device.

    ``maps`` is what ``explainer(x)`` returns; ``layer_maps`` are the same maps
    at the target layer's resolution (after ReLU, before upsampling and
    normalisation). ``targets`` holds the explained class of each image (None
    when the target was a callable); ``predictions`` and ``probabilities``
    the model's top class and its softmax probability (None when the model's
    output has no class scores).
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

    def __len__(self) -> int:
        return self.maps.shape[0]

    def __repr__(self) -> str:
        size = "x".join(map(str, self.maps.shape[1:]))
        grid = "x".join(map(str, self.layer_maps.shape[1:]))
        targets = "callable" if self.targets is None else _short(self.targets.tolist())
        return (f"Explanation(method={self.method!r}, layer={self.layer!r}, images={len(self)}, maps={size}, "
                f"layer_maps={grid}, targets={targets}, device={self.maps.device})")

    def with_display(
        self,
        images: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> "Explanation":
        """The same result drawn over ``images`` (or the input un-normalised with mean/std), with class names.

        ``images``: a ``(B, 3, H, W)`` batch or a list of ``(3, H, W)`` images of any sizes (the ``originals``
        ``camkit.load_images`` returns), uint8 in 0..255 or floats in [0, 1]; each is resized to the maps.
        """
        if images is None and mean is not None and std is not None:
            images = unnormalize(self.images, mean, std)
        elif images is not None:
            images = display_batch(images, len(self), tuple(self.maps.shape[1:]))
        return replace(self, display=images if images is not None else self.display,
                       class_names=class_names if class_names is not None else self.class_names)

    def class_name(self, index: int) -> str:
        """A class index as its name when ``class_names`` has one."""
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    def figure(self, **options: Any) -> Any:
        """A matplotlib figure: each image beside its overlay, captioned (see ``camkit.viz.explanation_figure``)."""
        return self._render("figure")(self, **options)

    def _repr_png_(self) -> bytes:
        """Jupyter shows the result as its figure."""
        return self.figure()._repr_png_()

    def show(self, **options: Any) -> None:
        """Display inline in IPython/Jupyter, else in a matplotlib window."""
        self._render("show")(self, **options)

    def save(self, path: str | Path, **options: Any) -> Path:
        """``"x.png"``: the figure (any format matplotlib infers). ``"folder/"``: per-image maps (npy),
        overlays (PNG) and ``explanation.json`` (method, layer, targets, predictions, versions)."""
        return self._render("save")(self, Path(path), **options)

    @staticmethod
    def _render(what: str) -> Callable[..., Any]:
        if what not in _renderer:
            raise CamkitError("Drawing an Explanation needs camkit.viz; import camkit (or camkit.viz) first.")
        return _renderer[what]


def display_batch(images: Any, count: int, size: tuple[int, ...]) -> torch.Tensor:
    """Images to draw under ``count`` maps of ``size``: float ``(B, 3, *size)`` in [0, 1], from uint8 or floats."""
    items = list(images) if isinstance(images, (list, tuple)) else None
    if items is None and not isinstance(images, torch.Tensor):
        raise CamkitTypeError(f"display images must be a tensor (B, 3, H, W) or a list of (3, H, W) tensors, got "
                              f"{type(images).__name__}.")
    if items is None:
        items = list(images.unbind(0)) if images.dim() == len(size) + 2 else []
    if len(items) != count or not all(isinstance(item, torch.Tensor) and item.dim() == len(size) + 1
                                      and item.shape[0] in (1, 3) for item in items):
        raise CamkitError(f"with_display needs {count} images of shape (3, H, W) or (1, H, W), one per map; got "
                          f"{len(items)} of shapes {[tuple(getattr(item, 'shape', ())) for item in items][:3]}.")
    mode = "bilinear" if len(size) == 2 else "trilinear"
    shown = []
    for item in items:
        # uint8 (what decoders and camkit.load_images give) is 0..255; floats are taken as [0, 1].
        image = item.float() / 255 if item.dtype == torch.uint8 else item.float()
        if tuple(image.shape[1:]) != size:
            image = F.interpolate(image[None], size=size, mode=mode, align_corners=False,
                                  antialias=len(size) == 2)[0]
        shown.append(image.expand(3, *image.shape[1:]).clamp(0, 1))
    return torch.stack(shown)


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"


__all__ = ["Explanation", "set_renderer"]
