"""An interactive view for Jupyter: pick image, method, class and opacity, and the overlay redraws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependency
from ..explainers import create, methods_for
from ..modes import evaluation
from ..ops.images import display_images
from .figures import overlay_grid


@dataclass
class InteractiveView:
    """The widgets (``controls`` by name) and the output they redraw into."""

    controls: dict[str, Any]
    output: Any
    box: Any = field(repr=False)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)


def interact(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    images: torch.Tensor | None = None,
    layer: Any = None,
) -> InteractiveView:
    """Dropdowns for image, method and class, a slider for alpha; each change redraws the overlay.

    Needs ipywidgets (``pip install 'camkit[widgets]'``). Maps are computed on
    demand and cached per (method, image, class).
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        raise MissingDependency("The interactive view needs ipywidgets: pip install 'camkit[widgets]'") from None

    methods = list(methods or methods_for(model))
    shown = images if images is not None else display_images(x)
    with torch.no_grad(), evaluation(model):
        logits = model(x)
    classes = list(range(logits.shape[1]))

    def label(index: int) -> str:
        # "3: tabby cat", but just "3" where the class's name is its number (no "3: 3")
        name = class_names[index] if class_names and index < len(class_names) else str(index)
        return name if name == str(index) else f"{index}: {name}"

    controls = {
        "image": widgets.IntSlider(value=0, min=0, max=x.shape[0] - 1, description="image"),
        "method": widgets.Dropdown(options=methods, value=methods[0], description="method"),
        "target": widgets.Dropdown(
            options=[("top class", -1)] + [(label(c), c) for c in classes], value=-1, description="class"
        ),
        "alpha": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="alpha"),
    }
    output = widgets.Output()
    explainers: dict[str, Any] = {}
    cache: dict[tuple[str, int, int], torch.Tensor] = {}

    def redraw(_change: Any = None) -> None:
        index, method = controls["image"].value, controls["method"].value
        target = controls["target"].value
        explained = int(logits[index].argmax()) if target == -1 else target
        key = (method, index, explained)
        if key not in cache:
            explainer = explainers.setdefault(method, create(method, model, layer))
            cache[key] = explainer(x[index : index + 1], explained)
        probabilities = logits[index].float().softmax(dim=0)
        predicted = int(probabilities.argmax())
        explains = f"explains {label(explained)}" if explainers[method].class_specific else "class-agnostic"
        caption = [[f"predicted {label(predicted)} ({float(probabilities[predicted]):.0%})", explains]]
        title = f"{method} @ {explainers[method].target_layer_name}"
        figure = overlay_grid(shown[index : index + 1], [(title, cache[key])], caption, alpha=controls["alpha"].value)
        output.clear_output(wait=True)
        with output:
            from IPython.display import display

            display(figure)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox(list(controls.values())[:2]), widgets.HBox(list(controls.values())[2:]), output])
    return InteractiveView(controls, output, box)
