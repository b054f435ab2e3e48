"""The rich result of an explanation: maps plus what the model said."""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
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

    class_names: Sequence[str] | None = None
    display: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], what to draw under the maps

    def __len__(self) -> int:
        return self.maps.shape[0]

    def with_display(
        self,
        images: torch.Tensor | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> "Explanation":
        """The same result drawn over ``images`` (or the input un-normalised with mean/std), with class names."""
        from dataclasses import replace

        from .viz import unnormalize

        if images is None and mean is not None and std is not None:
            images = unnormalize(self.images, mean, std)
        return replace(self, display=images if images is not None else self.display,
                       class_names=class_names if class_names is not None else self.class_names)

    def figure(self, alpha: float = 0.5, colormap: str = "jet", colorbar: bool = False) -> "Figure":
        """A matplotlib figure: each image beside its overlay, captioned with classes and probability."""
        from .viz import display_images, overlay_grid

        images = self.display if self.display is not None else display_images(self.images)
        captions = [[self._caption(row, predicted=True), self._caption(row, predicted=False)] for row in range(len(self))]
        return overlay_grid(images, [(f"{self.method} @ {self.layer}", self.maps)], captions,
                            alpha=alpha, colormap=colormap, colorbar=colorbar)

    def _repr_png_(self) -> bytes:
        """Jupyter shows the result as its figure."""
        return self.figure()._repr_png_()

    def show(self) -> None:
        """Display inline in IPython/Jupyter, else in a matplotlib window."""
        try:
            from IPython.display import Image, display

            display(Image(self._repr_png_()))
        except ImportError:
            import matplotlib.pyplot as plt

            plt.figure()
            plt.imshow(plt.imread(io.BytesIO(self._repr_png_())))
            plt.axis("off")
            plt.show()

    def save(self, path: str | Path, **options: object) -> Path:
        """Save the figure as PNG (or any format matplotlib infers from the suffix)."""
        path = Path(path)
        self.figure(**options).savefig(path, dpi=100)
        return path

    def _name(self, index: int) -> str:
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    def _caption(self, row: int, predicted: bool) -> str:
        if predicted:
            if self.predictions is None or self.probabilities is None:
                return ""
            return f"predicted {self._name(int(self.predictions[row]))} ({float(self.probabilities[row]):.0%})"
        return f"explains {self._name(int(self.targets[row]))}" if self.targets is not None else "explains target"
