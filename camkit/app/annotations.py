"""Reading ground truth for ``camkit evaluate``: boxes (COCO JSON, Pascal VOC XML, CSV) and mask folders.

Boxes come back per image file name as ``(x0, y0, x1, y1)`` float pixel
coordinates with x1/y1 exclusive (camkit's convention, as
:func:`camkit.metrics.boxes_to_masks`): COCO's ``[x, y, w, h]`` gives
``(x, y, x + w, y + h)``; VOC's 1-based inclusive ``xmin..xmax`` gives
``(xmin - 1, ymin - 1, xmax, ymax)``; a CSV row ``file,x0,y0,x1,y1[,label]``
is taken as written. Images are matched by file name, or by stem when the
names differ only in extension.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import torch

from ..errors import CamkitError

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class Annotations:
    """Boxes (and their labels, where the file gives them) per image file name."""

    boxes: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)

    def for_image(self, path: Path) -> torch.Tensor | None:
        """``(G, 4)`` boxes of the image at ``path`` (by name, then by stem), or None when it has none."""
        found = self.boxes.get(path.name)
        if found is None:
            found = self._by_stem().get(path.stem)
        return torch.tensor(found, dtype=torch.float64).reshape(-1, 4) if found else None

    def _by_stem(self) -> dict[str, list[tuple[float, float, float, float]]]:
        return {Path(name).stem: boxes for name, boxes in self.boxes.items()}


def read_boxes(path: Path) -> Annotations:
    """Boxes from a COCO JSON file, a folder of Pascal VOC XML files, or a CSV file (chosen by what ``path`` is)."""
    if path.is_dir():
        return read_voc(path)
    if not path.is_file():
        raise CamkitError(f"--boxes {path}: no such file or folder; give a COCO .json, a .csv or a folder of VOC .xml.")
    if path.suffix.lower() == ".json":
        return read_coco(path)
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    raise CamkitError(
        f"--boxes {path}: unknown format; give a COCO .json, a .csv (file,x0,y0,x1,y1[,label]) "
        "or a folder of Pascal VOC .xml files."
    )


def read_coco(path: Path) -> Annotations:
    try:
        data = json.loads(path.read_text())
        names = {image["id"]: Path(image["file_name"]).name for image in data["images"]}
        categories = {
            category["id"]: category.get("name", str(category["id"])) for category in data.get("categories", [])
        }
        result = Annotations()
        for item in data["annotations"]:
            x, y, width, height = (float(value) for value in item["bbox"])
            name = names[item["image_id"]]
            result.boxes.setdefault(name, []).append((x, y, x + width, y + height))
            result.labels.setdefault(name, []).append(categories.get(item.get("category_id"), ""))
    except (ValueError, KeyError, TypeError) as error:
        raise CamkitError(
            f"--boxes {path}: not a COCO annotation file ({type(error).__name__}: {error}); it needs "
            "'images' with id and file_name and 'annotations' with image_id and bbox [x, y, w, h]."
        ) from error
    return result


def read_voc(folder: Path) -> Annotations:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise CamkitError(f"--boxes {folder}: the folder holds no Pascal VOC .xml files.")
    result = Annotations()
    for file in files:
        try:
            root = ElementTree.parse(file).getroot()
            name_node = root.find("filename")
            name = name_node.text.strip() if name_node is not None and name_node.text else file.stem
            for item in root.iter("object"):
                box = item.find("bndbox")
                if box is None:
                    continue
                xmin, ymin, xmax, ymax = (float(box.findtext(key, "")) for key in ("xmin", "ymin", "xmax", "ymax"))
                result.boxes.setdefault(Path(name).name, []).append((xmin - 1, ymin - 1, xmax, ymax))
                result.labels.setdefault(Path(name).name, []).append(item.findtext("name", "") or "")
        except (ElementTree.ParseError, ValueError) as error:
            raise CamkitError(f"--boxes {file}: not a Pascal VOC annotation ({error}).") from error
    return result


def read_csv(path: Path) -> Annotations:
    result = Annotations()
    labels: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                box = tuple(float(value) for value in row[1:5])
            except ValueError:
                if number == 1:
                    continue  # a header line
                raise CamkitError(f"--boxes {path}:{number}: expected file,x0,y0,x1,y1[,label], got {row}.") from None
            if len(box) != 4:
                raise CamkitError(f"--boxes {path}:{number}: expected file,x0,y0,x1,y1[,label], got {row}.")
            name = Path(row[0].strip()).name
            result.boxes.setdefault(name, []).append(box)
            labels[name].append(row[5].strip() if len(row) > 5 else "")
    result.labels = dict(labels)
    return result


def find_mask(folder: Path, image: Path) -> Path | None:
    """The mask of ``image`` in ``folder``: the same stem with an image suffix (PNG preferred), or None."""
    for suffix in MASK_SUFFIXES:
        candidate = folder / f"{image.stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def scale_boxes(boxes: torch.Tensor, size: tuple[int, int], to: tuple[int, int]) -> torch.Tensor:
    """Boxes of an image of ``size`` (H, W) on that image resized to ``to`` (H, W)."""
    scale = torch.tensor([to[1] / size[1], to[0] / size[0]] * 2, dtype=torch.float64)
    return boxes.double() * scale
