"""Figures: overlay grids, method comparisons and an Explanation's own picture. matplotlib is imported on first draw."""
from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..explainers import create
from ..ops.images import display_images, unnormalize
from ..results import Explanation, set_renderer
from .colors import overlay, to_uint8_hwc

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


@lru_cache(maxsize=1)
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class DisplayedFigure(Figure):
        """A figure that Jupyter shows as PNG even when pyplot was never imported."""

        def _repr_png_(self) -> bytes:

            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=80)
            return buffer.getvalue()

    return DisplayedFigure


def overlay_grid(
    images: torch.Tensor,
    columns: Sequence[tuple[str, torch.Tensor]],
    captions: Sequence[Sequence[str]] | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    colorbar: bool = False,
    panel_size: float = 2.2,
) -> "Figure":
    """A figure with one row per image: the image, then one overlay per ``(title, maps)`` column.

    ``captions[row][column]`` (``column`` 0 is the image) go under each panel.
    """
    rows = images.shape[0]
    width = len(columns) + 1
    figure = _figure_class()(figsize=(panel_size * width + (0.6 if colorbar else 0), panel_size * rows + 0.3), layout="constrained")
    axes = figure.subplots(rows, width, squeeze=False)
    shown = to_uint8_hwc(images.detach().float().expand(-1, 3, -1, -1)).cpu().numpy()
    for row in range(rows):
        axes[row][0].imshow(shown[row])
        for column, (_, maps) in enumerate(columns, start=1):
            blended = overlay(images[row : row + 1].detach().float(), maps[row : row + 1].detach(), alpha, colormap)
            axes[row][column].imshow(to_uint8_hwc(blended)[0].cpu().numpy())
        for column in range(width):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("image" if column == 0 else columns[column - 1][0], fontsize=9)
            if captions is not None:
                axis.set_xlabel(captions[row][column], fontsize=8)
    if colorbar:
        import matplotlib
        from matplotlib.cm import ScalarMappable

        mappable = ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=colormap)
        figure.colorbar(mappable, ax=axes[:, -1].tolist(), shrink=0.8, label="map value")
    return figure


def compare(
    model: torch.nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] = ("gradcam", "gradcam++", "eigencam"),
    *,
    target: Any = None,
    layer: Any = None,
    class_names: Sequence[str] | None = None,
    images: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    colorbar: bool = False,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> "Figure":
    """Images in rows, methods in columns (after the original), as a matplotlib figure.

    ``images`` are what to draw under the maps (floats in [0, 1]); by default
    the input un-normalised with ``mean``/``std``, or min-max scaled per image.
    Captions name the explained and the predicted class (with ``class_names``).
    """
    shown = images if images is not None else (unnormalize(x, mean, std) if mean is not None and std is not None else display_images(x))
    columns: list[tuple[str, torch.Tensor]] = []
    result = None
    for method in methods:
        result = create(method, model, layer, **(method_options or {}).get(method, {})).explain(x, target)
        columns.append((method, result.maps))

    captions = None
    if result is not None and result.predictions is not None:
        named = result.with_display(class_names=class_names)
        captions = [[predicted_caption(named, row)] + [explained_caption(named, row)] * len(columns)
                    for row in range(x.shape[0])]
    return overlay_grid(shown, columns, captions, alpha=alpha, colormap=colormap, colorbar=colorbar)


def predicted_caption(result: Explanation, row: int) -> str:
    """"predicted <class> (<probability>)", or "" when the model's output has no class scores."""
    if result.predictions is None or result.probabilities is None:
        return ""
    return f"predicted {result.class_name(int(result.predictions[row]))} ({float(result.probabilities[row]):.0%})"


def explained_caption(result: Explanation, row: int) -> str:
    """What the map explains: a class, a callable target's score."""
    return f"explains {result.class_name(int(result.targets[row]))}" if result.targets is not None else "explains target"


def explanation_figure(result: Explanation, alpha: float = 0.5, colormap: str = "jet", colorbar: bool = False) -> "Figure":
    """Each image of ``result`` beside its overlay, captioned with classes and probability."""
    images = result.display if result.display is not None else display_images(result.images)
    captions = [[predicted_caption(result, row), explained_caption(result, row)] for row in range(len(result))]
    return overlay_grid(images, [(f"{result.method} @ {result.layer}", result.maps)], captions,
                        alpha=alpha, colormap=colormap, colorbar=colorbar)


def show_explanation(result: Explanation, **options: Any) -> None:
    """Inline in IPython/Jupyter, else in a matplotlib window."""
    png = explanation_figure(result, **options)._repr_png_()
    try:
        from IPython.display import Image, display
    except ImportError:
        import matplotlib.pyplot as plt

        plt.figure()
        plt.imshow(plt.imread(io.BytesIO(png)))
        plt.axis("off")
        plt.show()
        return
    display(Image(png))


def save_explanation(result: Explanation, path: Path, **options: Any) -> Path:
    """The figure as PNG (or any format matplotlib infers from the suffix)."""
    explanation_figure(result, **options).savefig(path, dpi=100)
    return path


set_renderer(figure=explanation_figure, show=show_explanation, save=save_explanation)
