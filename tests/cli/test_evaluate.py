"""``camkit evaluate`` on the user's own annotated images (the demo model, a few tiny files)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camkit.cli import main


def test_evaluate_user_images_with_boxes_and_masks(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    generator = np.random.default_rng(0)
    rows = ["file,x0,y0,x1,y1"]
    for index in range(3):
        Image.fromarray(generator.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images / f"im{index}.png")
        mask = np.zeros((48, 40), dtype=np.uint8)
        mask[10:30, 5 + index : 25 + index] = 255
        Image.fromarray(mask).save(masks / f"im{index}.png")
        rows.append(f"im{index}.png,{5 + index},10,{25 + index},30")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    table, markdown = tmp_path / "t.csv", tmp_path / "t.md"
    code = main(["evaluate", str(images), "--boxes", str(tmp_path / "boxes.csv"), "--masks", str(masks),
                 "--methods", "gradcam", "--steps", "4", "--samples", "1", "--device", "cpu",
                 "--csv", str(table), "--markdown", str(markdown)])
    assert code == 0
    with table.open() as handle:
        (row,) = list(csv.DictReader(handle))
    for column in ("max_box_acc_v2", "localisation_error", "pxap", "pointing_game", "road_combined",
                   "max_sensitivity", "gradient_noise_ssim", "sparseness", "adcc"):
        assert row[column] != "" and np.isfinite(float(row[column])), column
    assert 0 <= float(row["max_box_acc_v2"]) <= 100 and 0 <= float(row["pxap"]) <= 100
    assert markdown.read_text().startswith("| method |")


def test_plot_is_a_png_of_the_filled_columns() -> None:
    from camkit.app.evaluation import COLUMNS, _plot

    rows = [{column: "" for column in COLUMNS} | {"method": name, "pxap": "50.0", "sparseness": value}
            for name, value in (("gradcam", "0.7"), ("eigencam", "0.8"))]
    curves = [torch.linspace(0, 50, 100, dtype=torch.float64), None]
    assert _plot(rows, [{"sparseness": 0.1}, {}], curves)[:4] == b"\x89PNG"


def test_images_without_annotations_are_left_out(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * index, dtype=np.uint8)).save(images / f"im{index}.png")
    (tmp_path / "boxes.csv").write_text("im0.png,2,2,20,20\n")
    code = main(["evaluate", str(images), "--boxes", str(tmp_path / "boxes.csv"), "--methods", "eigencam",
                 "--steps", "2", "--samples", "0", "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "im1.png: no box for this image; left out" in captured.err
    assert "| eigencam |" in captured.out
