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

from .errors import CamkitError
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
    normalisation). The pixel methods (saliency, guided backprop, integrated
    gradients, ...) also fill ``attributions``: the signed, raw attribution of
    every input value, shaped like ``images`` (FullGrad's has one channel);
    their ``maps`` are its per-image min-max normalised reduction over
    channels, and ``layer_maps`` that reduction before normalising. ``targets`` holds the explained class of each image (None
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
    attributions: torch.Tensor | None = None  # (B, C, H, W) signed, raw; pixel methods only

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
        images: torch.Tensor | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> "Explanation":
        """The same result drawn over ``images`` (or the input un-normalised with mean/std), with class names."""
        if images is None and mean is not None and std is not None:
            images = unnormalize(self.images, mean, std)
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


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"


__all__ = ["Explanation", "set_renderer"]
