"""Figures: overlay grids, method comparisons and an Explanation's own picture. matplotlib is imported on first draw."""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..explainers import create
from ..ops.images import display_images, unnormalize
from ..ops.maps import normalised_at_size
from ..results import Explanation, set_renderer
from .colors import ColormapSpec, attribution_picture, overlay, to_uint8_hwc

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


@lru_cache(maxsize=1)
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class DisplayedFigure(Figure):
        """A figure that Jupyter shows as PNG even when pyplot was never imported."""

        def _repr_png_(self) -> bytes:
            return _png(self)

    return DisplayedFigure


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes, as Jupyter shows it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _wrapped(text: str, panel_size: float) -> str:
    """Lines of at most ~11 characters per inch of panel, broken after spaces and after the dots of layer names."""
    width = max(8, int(panel_size * 11))
    lines = [""]
    for token in re.split(r"(?<=[.\s])", text):
        if lines[-1] and len(lines[-1]) + len(token) > width:
            lines.append("")
        lines[-1] += token
    return "\n".join(line.strip() for line in lines)


def overlay_grid(
    images: torch.Tensor,
    columns: Sequence[tuple[str, torch.Tensor]],
    captions: Sequence[Sequence[str]] | None = None,
    *,
    alpha: float = 0.5,
    colormap: ColormapSpec = "jet",
    colorbar: bool = True,
    panel_size: float = 2.6,
    bars: Sequence[tuple[Sequence[str], Sequence[float]]] | None = None,
    pictures: Sequence[torch.Tensor | None] | None = None,
) -> Figure:
    """A figure with one row per image: the image, then one overlay per ``(title, maps)`` column.

    ``pictures[column]`` (one per column, None for the overlay): ``(B, 3, H, W)`` RGB in [0, 1]
    drawn instead of that column's overlay (a pixel method's signed attributions,
    :func:`attribution_panels`); the colour bar is for the overlays.
    ``captions[row][column]`` (``column`` 0 is the image) go under each panel.
    Titles are wrapped to the panel's width rather than cut at the figure's edge.
    ``bars[row]`` = (labels, values) adds a last column with a horizontal bar chart (the top channels' weights).
    """
    rows = images.shape[0]
    width = len(columns) + 1 + (1 if bars is not None else 0)
    figure = _figure_class()(
        figsize=(panel_size * width + (0.6 if colorbar else 0), panel_size * rows + 0.3), layout="constrained"
    )
    axes = figure.subplots(rows, width, squeeze=False)
    shown = to_uint8_hwc(images.detach().float().expand(-1, 3, -1, -1)).cpu().numpy()
    for row in range(rows):
        axes[row][0].imshow(shown[row])
        for column, (_, maps) in enumerate(columns, start=1):
            picture = pictures[column - 1] if pictures is not None else None
            if picture is not None:
                drawn = picture[row : row + 1].detach().float()
            else:
                drawn = overlay(images[row : row + 1].detach().float(), maps[row : row + 1].detach(), alpha, colormap)
            axes[row][column].imshow(to_uint8_hwc(drawn)[0].cpu().numpy())
        if bars is not None:
            _bar_chart(axes[row][-1], *bars[row])
        for column in range(width - (1 if bars is not None else 0)):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(_wrapped("image" if column == 0 else columns[column - 1][0], panel_size), fontsize=9)
            if captions is not None:
                axis.set_xlabel(_wrapped(captions[row][column], panel_size), fontsize=8)
    if colorbar:
        import matplotlib
        from matplotlib.cm import ScalarMappable

        mappable = ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=colormap)
        figure.colorbar(mappable, ax=axes[:, -2 if bars is not None else -1].tolist(), shrink=0.8, label="map value")
    return figure


def _bar_chart(axis: Any, labels: Sequence[str], values: Sequence[float]) -> None:
    positions = list(range(len(labels)))
    axis.barh(positions, values, color=["tab:red" if value >= 0 else "tab:blue" for value in values])
    axis.set_yticks(positions, labels, fontsize=7)
    axis.invert_yaxis()  # the largest weight on top
    axis.tick_params(axis="x", labelsize=7)
    axis.set_title("top channels (weight)", fontsize=9)


def channel_bars(result: Explanation, k: int = 8) -> list[tuple[list[str], list[float]]] | None:
    """Per image, the ``k`` largest channel weights as ("channel i", weight) bars; None without channel weights."""
    if result.channel_weights is None:
        return None
    indices, weights = result.top_channels(k)
    return [
        ([f"ch {index}" for index in row_indices], [float(weight) for weight in row_weights])
        for row_indices, row_weights in zip(indices.tolist(), weights.detach().cpu().tolist())
    ]


def top_channel_maps(result: Explanation, k: int = 3) -> list[tuple[torch.Tensor, list[str]]]:
    """The feature maps of each image's ``k`` largest-weight channels: per rank, ``(B, H, W)`` maps in [0, 1]
    (upsampled to the image, min-max normalised) and one "ch i, w 0.12" caption per image; [] without them."""
    activations = result.channel_activations
    if result.channel_weights is None or activations is None or k < 1 or activations.dim() != result.maps.dim() + 1:
        return []
    indices, weights = result.top_channels(k)
    rows = torch.arange(activations.shape[0], device=activations.device)
    size = tuple(result.maps.shape[1:])
    found = []
    for rank in range(indices.shape[1]):
        chosen = activations[rows, indices[:, rank].to(activations.device)].float()
        labels = [
            f"ch {int(index)}, w {float(weight):.3g}"
            for index, weight in zip(indices[:, rank].tolist(), weights[:, rank].tolist())
        ]
        found.append((normalised_at_size(chosen, size), labels))
    return found


def attribution_panels(attributions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel method's signed attributions as the Grad-CAM paper draws them (:func:`attribution_picture`), at ``size``."""
    picture = attribution_picture(attributions.detach().float().cpu())
    if tuple(picture.shape[2:]) != tuple(size):
        picture = torch.nn.functional.interpolate(picture, size=size, mode="bilinear", align_corners=False)
    return picture


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
    colormap: ColormapSpec = "jet",
    colorbar: bool = True,
    method_options: dict[str, dict[str, Any]] | None = None,
    inputs: Any = None,
) -> Figure:
    """Images in rows, methods in columns (after the original), as a matplotlib figure.

    ``images`` are what to draw under the maps (floats in [0, 1]); by default
    the input un-normalised with ``mean``/``std``, or min-max scaled per image.
    Captions name the explained and the predicted class (with ``class_names``).
    ``inputs``: the model's other inputs, passed to every method (see ``Explainer.explain``).
    A pixel method (guided backprop, guided Grad-CAM, ...) shows its signed attributions as a
    picture instead of a heatmap overlay, as ``camkit overlay`` writes it.
    """
    shown = (
        images
        if images is not None
        else (unnormalize(x, mean, std) if mean is not None and std is not None else display_images(x))
    )
    columns: list[tuple[str, torch.Tensor]] = []
    pictures: list[torch.Tensor | None] = []
    results = []
    size = (int(shown.shape[-2]), int(shown.shape[-1]))
    for method in methods:
        result = create(method, model, layer, **(method_options or {}).get(method, {})).explain(
            x, target, inputs=inputs
        )
        results.append(result.with_display(class_names=class_names))
        if result.attributions is not None:
            columns.append((f"{result.method} @ {result.layer}: attributions", result.maps))
            pictures.append(attribution_panels(result.attributions, size))
        else:
            columns.append((f"{result.method} @ {result.layer}", result.maps))
            pictures.append(None)

    captions = None
    if results and results[0].predictions is not None:
        captions = [
            [predicted_caption(results[0], row)] + [explained_caption(result, row) for result in results]
            for row in range(x.shape[0])
        ]
    return overlay_grid(shown, columns, captions, alpha=alpha, colormap=colormap, colorbar=colorbar, pictures=pictures)


def predicted_caption(result: Explanation, row: int) -> str:
    """ "predicted <class> (<probability>)", or "" when the model's output has no class scores."""
    if result.predictions is None or result.probabilities is None:
        return ""
    return f"predicted {result.class_name(int(result.predictions[row]))} ({float(result.probabilities[row]):.0%})"


def explained_caption(result: Explanation, row: int) -> str:
    """What the map explains: a class, a callable target's score, or nothing class-specific."""
    if not result.class_specific:
        return "class-agnostic"
    return (
        f"explains {result.class_name(int(result.targets[row]))}" if result.targets is not None else "explains target"
    )


def explanation_figure(
    result: Explanation,
    alpha: float = 0.5,
    colormap: ColormapSpec = "jet",
    colorbar: bool = True,
    top_channels: int = 8,
    channel_maps: int = 3,
) -> Figure:
    """Each image of ``result`` beside its overlay, captioned with classes and probability.

    A channel-weighted result adds a bar chart of each image's ``top_channels`` largest channel weights (0: none)
    and, before it, the feature maps of its ``channel_maps`` largest-weight channels (0: none), each upsampled
    and min-max normalised over the image, captioned with its channel and weight.
    A pixel method's result shows its signed attributions as a picture, then the overlay of its map.
    """
    images = result.display if result.display is not None else display_images(result.images)
    columns = [(f"{result.method} @ {result.layer}", result.maps)]
    pictures: list[torch.Tensor | None] = [None]
    captions = [[predicted_caption(result, row), explained_caption(result, row)] for row in range(len(result))]
    for rank, (maps, labels) in enumerate(top_channel_maps(result, channel_maps), start=1):
        columns.append((f"top channel {rank}", maps))
        pictures.append(None)
        for row, label in enumerate(labels):
            captions[row].append(label)
    if result.attributions is not None:
        columns.insert(0, (f"{result.method}: attributions", result.maps))
        pictures.insert(0, attribution_panels(result.attributions, (int(images.shape[-2]), int(images.shape[-1]))))
        captions = [[row[0], row[1], "sum over channels of |attributions|", *row[2:]] for row in captions]
    return overlay_grid(
        images,
        columns,
        captions,
        pictures=pictures,
        alpha=alpha,
        colormap=colormap,
        colorbar=colorbar,
        bars=channel_bars(result, top_channels) if top_channels else None,
    )


def show_explanation(result: Explanation, **options: Any) -> None:
    """Inline in Jupyter; in a plain script, a matplotlib window (or a clear warning where none can open)."""
    show_figure(explanation_figure(result, **options), "Explanation")


def show_figure(figure: Figure, what: str) -> None:
    """A result's figure inline in Jupyter, else in a matplotlib window (``what`` names the result in a warning)."""
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(_png(figure)))
        return
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend().lower()
    if backend in ("agg", "pdf", "ps", "svg", "cairo", "template") or backend.startswith("module://matplotlib_inline"):
        warnings.warn(
            f"{what}.show(): matplotlib's backend {backend!r} cannot open a window (no display?); "
            "use .save('explanation.png') or .save('folder/') instead.",
            stacklevel=3,
        )
        return
    shown = plt.figure(figsize=figure.get_size_inches())
    shown.figimage(plt.imread(io.BytesIO(_png(figure))), resize=True)
    plt.show()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def save_explanation(result: Explanation, path: Path, **options: Any) -> Path:
    """A file with a suffix: the figure (PNG, or any format matplotlib infers). A folder: everything, per image.

    The folder gets, for image ``i``, ``{i:04d}_map.npy`` (the float32 map),
    ``{i:04d}_overlay.png`` (over the display images) and one
    ``explanation.json`` with the method, layer, targets, predictions,
    probabilities, scores and the camkit and torch versions. A pixel method's result adds
    ``{i:04d}_attributions.npy`` (the raw, signed ``(C, H, W)`` attributions) and
    ``{i:04d}_attributions.png`` (their picture, as ``camkit overlay`` draws it).
    """
    if path.suffix and not path.is_dir():
        explanation_figure(result, **options).savefig(path, dpi=100)
        return path
    import numpy as np
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    images = result.display if result.display is not None else display_images(result.images)
    blended = (
        to_uint8_hwc(
            overlay(
                images.detach().float(), result.maps.detach(), options.get("alpha", 0.5), options.get("colormap", "jet")
            )
        )
        .cpu()
        .numpy()
    )
    maps = result.maps.detach().float().cpu().numpy()
    files = []
    for index in range(len(result)):
        np.save(path / f"{index:04d}_map.npy", maps[index])
        Image.fromarray(blended[index]).save(path / f"{index:04d}_overlay.png")
        files.append({"map": f"{index:04d}_map.npy", "overlay": f"{index:04d}_overlay.png"})
    if result.attributions is not None:
        raw = result.attributions.detach().float().cpu()
        pictures = to_uint8_hwc(attribution_picture(raw)).numpy()
        for index in range(len(result)):
            np.save(path / f"{index:04d}_attributions.npy", raw[index].numpy())
            Image.fromarray(pictures[index]).save(path / f"{index:04d}_attributions.png")
            files[index].update(
                {
                    "attributions": f"{index:04d}_attributions.npy",
                    "attribution_picture": f"{index:04d}_attributions.png",
                }
            )

    def listed(values: torch.Tensor | None) -> list | None:
        return None if values is None else values.detach().cpu().tolist()

    record = {
        "camkit": _version("camkit"),
        "torch": torch.__version__,
        "method": result.method,
        "layer": result.layer,
        "uses_gradients": result.uses_gradients,
        "targets": listed(result.targets),
        "predictions": listed(result.predictions),
        "probabilities": listed(result.probabilities),
        "scores": listed(result.scores),
        "class_names": list(result.class_names) if result.class_names else None,
        "images": files,
    }
    if result.channel_weights is not None:  # (B, K): the weights the map summed the layer's channels with
        np.save(path / "channel_weights.npy", result.channel_weights.detach().float().cpu().numpy())
        record["channel_weights"] = "channel_weights.npy"
    (path / "explanation.json").write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
    return path


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "0.0.0"


set_renderer(figure=explanation_figure, show=show_explanation, save=save_explanation)
