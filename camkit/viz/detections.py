"""Drawing a DetectionExplanation: every box with its label and score over its map, one panel per detection and a combined view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..ops.images import display_images
from ..results import DetectionExplanation, set_renderer
from .colors import overlay, to_uint8_hwc
from .figures import _figure_class, _version, show_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BOX_COLOR = "white"


def detection_caption(result: DetectionExplanation, image: int, row: int) -> str:
    """ "<label name> <score>" of one detection."""
    return f"{result.class_name(int(result.labels[image][row]))} {float(result.scores[image][row]):.2f}"


def detection_overlays(
    result: DetectionExplanation, *, alpha: float = 0.5, colormap: str = "jet", per_detection: bool = False
) -> list[torch.Tensor]:
    """uint8 ``(3, H, W)`` pictures: per image, its combined map with every box and caption; with
    ``per_detection``, per image a ``(N_b, 3, H, W)`` stack, each detection's map with its own box."""
    from torchvision.utils import draw_bounding_boxes

    images = _display(result)
    pictures = []
    for index in range(len(result)):
        image = images[index : index + 1]
        maps = result.maps[index].detach() if per_detection else result.combined()[index : index + 1]
        blended = (overlay(image.expand(maps.shape[0], -1, -1, -1), maps, alpha, colormap) * 255).round()
        blended = blended.to(torch.uint8).cpu()
        boxes = result.boxes[index].detach().cpu()
        captions = [detection_caption(result, index, row) for row in range(boxes.shape[0])]
        if per_detection:
            drawn = [
                draw_bounding_boxes(picture, boxes[row : row + 1], [captions[row]], colors=BOX_COLOR, width=2)
                for row, picture in enumerate(blended)
            ]
            pictures.append(torch.stack(drawn) if drawn else blended)
        else:
            pictures.append(
                draw_bounding_boxes(blended[0], boxes, captions, colors=BOX_COLOR, width=2)
                if boxes.shape[0]
                else blended[0]
            )
    return pictures


def detection_figure(
    result: DetectionExplanation,
    alpha: float = 0.5,
    colormap: str = "jet",
    max_panels: int = 6,
    panel_size: float = 2.6,
) -> Figure:
    """One row per image: all boxes over the combined map, then one panel per detection (at most ``max_panels``)."""
    from matplotlib.patches import Rectangle

    images = _display(result)
    combined = result.combined()
    width = 1 + min(max_panels, max((maps.shape[0] for maps in result.maps), default=0))
    figure = _figure_class()(figsize=(panel_size * width, panel_size * len(result) + 0.3), layout="constrained")
    axes = figure.subplots(len(result), width, squeeze=False)
    for index in range(len(result)):
        panels = [(combined[index : index + 1], list(range(len(result.labels[index]))), "all detections")]
        panels += [
            (result.maps[index][row : row + 1], [row], detection_caption(result, index, row))
            for row in range(min(max_panels, len(result.labels[index])))
        ]
        for axis in axes[index]:
            axis.set_axis_off()
        for axis, (maps, rows, title) in zip(axes[index], panels):
            blended = overlay(images[index : index + 1], maps.detach(), alpha, colormap)
            axis.imshow(to_uint8_hwc(blended)[0].cpu().numpy())
            for row in rows:
                x0, y0, x1, y1 = result.boxes[index][row].tolist()
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOR, linewidth=1.5))
                if len(rows) > 1:
                    axis.text(
                        x0,
                        y0,
                        detection_caption(result, index, row),
                        color="black",
                        fontsize=6,
                        backgroundcolor=BOX_COLOR,
                        va="bottom",
                    )
            axis.set_title(title, fontsize=9)
    figure.suptitle(f"{result.method} @ {result.layer}", fontsize=9)
    return figure


def show_detections(result: DetectionExplanation, **options: Any) -> None:
    """Inline in Jupyter, else a matplotlib window."""
    show_figure(detection_figure(result, **options), "DetectionExplanation")


def save_detections(result: DetectionExplanation, path: Path, **options: Any) -> Path:
    """A file with a suffix: the figure. A folder: per image ``{i:04d}_detections.png`` (all boxes over
    the combined map), per detection ``{i:04d}_{n:02d}_overlay.png`` and ``_map.npy``, and ``detections.json``."""
    if path.suffix and not path.is_dir():
        detection_figure(result, **options).savefig(path, dpi=100)
        return path
    import numpy as np
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    colors = {key: options[key] for key in ("alpha", "colormap") if key in options}
    combined = detection_overlays(result, **colors)
    single = detection_overlays(result, per_detection=True, **colors)
    records = []
    for index in range(len(result)):
        Image.fromarray(combined[index].permute(1, 2, 0).numpy()).save(path / f"{index:04d}_detections.png")
        for row in range(len(result.labels[index])):
            stem = f"{index:04d}_{row:02d}"
            np.save(path / f"{stem}_map.npy", result.maps[index][row].detach().float().cpu().numpy())
            Image.fromarray(single[index][row].permute(1, 2, 0).numpy()).save(path / f"{stem}_overlay.png")
            records.append(
                {
                    "image": index,
                    "detection": row,
                    "box": result.boxes[index][row].tolist(),
                    "label": int(result.labels[index][row]),
                    "label_name": result.class_name(int(result.labels[index][row])),
                    "score": float(result.scores[index][row]),
                    "key": int(result.keys[index][row]),
                    "map": f"{stem}_map.npy",
                    "overlay": f"{stem}_overlay.png",
                }
            )
    record = {
        "camkit": _version("camkit"),
        "torch": torch.__version__,
        "method": result.method,
        "layer": result.layer,
        "family": result.family,
        "detections": records,
    }
    (path / "detections.json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def _display(result: DetectionExplanation) -> torch.Tensor:
    images = result.display if result.display is not None else display_images(result.images)
    return images.detach().float().expand(-1, 3, -1, -1)


set_renderer(figure=detection_figure, show=show_detections, save=save_detections, kind="detection")

__all__ = ["detection_caption", "detection_figure", "detection_overlays", "save_detections", "show_detections"]
