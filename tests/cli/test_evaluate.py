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


def _annotated_images(tmp_path: Path, count: int) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(1)
    rows = []
    for index in range(count):
        Image.fromarray(generator.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"im{index}.png")
        rows.append(f"im{index}.png,{4 + index},6,{24 + index},30")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    return images, tmp_path / "boxes.csv"


def _table(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{key: value for key, value in row.items() if key != "seconds_per_image"}
                for row in csv.DictReader(handle)]


def test_evaluate_resumes_only_the_missing_images_and_reuses_finished_ones(tmp_path: Path, monkeypatch, capsys) -> None:
    """An interrupted run keeps its finished batches; the rerun scores the rest; a repeat scores nothing."""
    from camkit.app import evaluation

    images, boxes = _annotated_images(tmp_path, 3)
    scored: list[int] = []
    real = evaluation._score_batch

    def counting(*args, **kwargs):
        if interrupt_after is not None and len(scored) >= interrupt_after:
            raise KeyboardInterrupt
        records = real(*args, **kwargs)
        scored.append(len(records))
        return records

    monkeypatch.setattr(evaluation, "_score_batch", counting)
    out = tmp_path / "out"
    command = ["evaluate", str(images), "--boxes", str(boxes), "--methods", "gradcam,eigencam", "--steps", "2",
               "--samples", "1", "--device", "cpu", "--batch-size", "1", "-o", str(out), "--quiet"]
    interrupt_after = 2  # gradcam's first two images, then the run is cut off
    assert main(command) == 130
    assert f"what finished is in {out}/.evaluation" in capsys.readouterr().err
    assert scored == [1, 1] and not (out / "evaluation.csv").exists()
    interrupt_after, scored[:] = None, []
    assert main(command) == 0
    assert sum(scored) == 4  # gradcam's third image and eigencam's three
    first = (out / "evaluation.csv").read_text()
    scored.clear()
    assert main(command) == 0
    assert scored == []  # nothing new: every (image, method) came from the store
    assert (out / "evaluation.csv").read_text() == first  # identical, seconds included
    fresh = tmp_path / "fresh"
    assert main([*command[:-3], "-o", str(fresh), "--quiet"]) == 0
    assert sum(scored) == 6
    assert _table(out / "evaluation.csv") == _table(fresh / "evaluation.csv")  # a resumed run equals a fresh one
    changed = list(command)
    changed[7] = "3"  # other --steps: other numbers, nothing reused
    assert main(changed) == 0
    assert sum(scored) == 12


def test_evaluate_report_section_alone_and_extending_overlays_report(tmp_path: Path) -> None:
    from camkit.app import report
    from camkit.app.manifest import MANIFEST_FIELDS

    images, boxes = _annotated_images(tmp_path, 2)
    out = tmp_path / "out"
    command = ["evaluate", str(images), "--boxes", str(boxes), "--methods", "eigencam", "--steps", "2",
               "--samples", "0", "--device", "cpu", "-o", str(out), "--report", "--quiet"]
    assert main(command) == 0
    page = (out / "report.html").read_text()
    assert report.GENERATOR in page and '<section id="evaluation">' in page
    assert '<img src="evaluation.png"' in page and (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert "<td>eigencam</td>" in page and "max_box_acc_v2" in page
    # overlay's manifest in the folder: the page is its report plus the section
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerow({"input": "../images/im0.png", "output": "im0_gradcam.png", "method": "gradcam",
                         "predicted_class": "3", "predicted_name": "", "score": "0.5", "explained_class": "3",
                         "status": "ok", "error": ""})
    assert main(command) == 0
    page = (out / "report.html").read_text()
    assert '<section id="evaluation">' in page and "im0_gradcam.png" in page
    # and overlay's own report keeps the section
    report.write_report(out / "manifest.csv")
    assert '<section id="evaluation">' in (out / "report.html").read_text()
    (out / "report.html").write_text("<html>the user's own page</html>")
    assert main(command) != 0  # never overwritten


def test_report_needs_an_output_folder(capsys) -> None:
    assert main(["evaluate", "--report", "--n-images", "1", "--quiet"]) != 0
    assert "--report writes OUT/report.html: add --output OUT" in capsys.readouterr().err
