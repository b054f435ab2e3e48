"""Colormaps, overlays and figures: batched torch on the maps' device, matplotlib only to draw.

The CLI writes what :func:`overlay` returns; notebooks draw the same pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=32)
def _lut_cpu(name: str) -> torch.Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        examples = ", ".join(["jet", "turbo", "viridis", "inferno", "magma", "gray"])
        raise ValueError(f"Unknown colormap {name!r}; use a matplotlib colormap name such as {examples}.") from None
    import numpy as np

    return torch.from_numpy(cmap(np.arange(cmap.N))[:, :3].astype("float32"))


def colormap_lut(name: str = "jet", device: torch.device | str | None = None) -> torch.Tensor:
    """A matplotlib colormap as an ``(N, 3)`` float32 lookup table on ``device``."""
    return _lut_cpu(name).to(device) if device is not None else _lut_cpu(name)


def colorize(maps: torch.Tensor, colormap: str = "jet") -> torch.Tensor:
    """Maps ``(B, H, W)`` in [0, 1] to RGB ``(B, 3, H, W)`` in [0, 1].

    Bins exactly as matplotlib's ``Colormap.__call__`` does for floats: index
    ``floor(value * N)``, with 1.0 in the last bin, so the pixels equal
    ``cmap(value)``.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}.")
    lut = colormap_lut(colormap, maps.device)
    index = (maps.float().clamp(0, 1) * lut.shape[0]).long().clamp_max(lut.shape[0] - 1)
    return lut[index].permute(0, 3, 1, 2)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, colormap: str = "jet") -> torch.Tensor:
    """``(1 - alpha) * image + alpha * colormap(map)``, ``(B, 3, H, W)`` in [0, 1].

    ``images`` are floats in [0, 1], RGB or grayscale (repeated to RGB);
    maps of another size are resized bilinearly (half-pixel centres) to the images.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}.")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must have shape (B={images.shape[0]}, h, w), got {tuple(maps.shape)}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    if maps.shape[1:] != images.shape[2:]:
        maps = F.interpolate(maps[:, None].float(), size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    images = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    return (1 - alpha) * images + alpha * colorize(maps, colormap).to(images.device)


def unnormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A normalised input batch back to displayable [0, 1] images."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


def display_images(x: torch.Tensor) -> torch.Tensor:
    """Inputs of unknown normalisation made displayable: each image min-max scaled to [0, 1]."""
    flat = x.flatten(1)
    low, high = flat.amin(1).reshape(-1, 1, 1, 1), flat.amax(1).reshape(-1, 1, 1, 1)
    return ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` floats in [0, 1] to ``(B, H, W, 3)`` uint8, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


@lru_cache(maxsize=1)
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class DisplayedFigure(Figure):
        """A figure that Jupyter shows as PNG even when pyplot was never imported."""

        def _repr_png_(self) -> bytes:
            import io

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
    from .explainers import create

    shown = images if images is not None else (unnormalize(x, mean, std) if mean is not None and std is not None else display_images(x))
    columns: list[tuple[str, torch.Tensor]] = []
    result = None
    for method in methods:
        result = create(method, model, layer, **(method_options or {}).get(method, {})).explain(x, target)
        columns.append((method, result.maps))

    def name(index: int) -> str:
        return class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)

    captions = None
    if result is not None and result.predictions is not None:
        captions = []
        for row in range(x.shape[0]):
            predicted = f"predicted {name(int(result.predictions[row]))} ({float(result.probabilities[row]):.0%})"
            explained = f"explains {name(int(result.targets[row]))}" if result.targets is not None else "explains target"
            captions.append([predicted] + [explained] * len(columns))
    return overlay_grid(shown, columns, captions, alpha=alpha, colormap=colormap, colorbar=colorbar)
