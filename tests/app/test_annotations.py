"""Reading boxes (COCO JSON, Pascal VOC XML, CSV) and masks for ``camkit evaluate``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from camkit import CamkitError
from camkit.app.annotations import find_mask, read_boxes, scale_boxes


def test_coco_voc_and_csv_give_the_same_exclusive_boxes(tmp_path: Path) -> None:
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "sub/a.jpg"}, {"id": 8, "file_name": "b.png"}],
        "annotations": [{"image_id": 7, "bbox": [2, 3, 10, 5], "category_id": 1},
                        {"image_id": 7, "bbox": [0, 0, 4, 4], "category_id": 2},
                        {"image_id": 8, "bbox": [1, 1, 2, 2], "category_id": 1}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>cat</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>12</xmax><ymax>8</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
        "</annotation>")
    table = tmp_path / "boxes.csv"
    table.write_text("file,x0,y0,x1,y1,label\na.jpg,2,3,12,8,cat\na.jpg,0,0,4,4,dog\n")
    expected = torch.tensor([[2.0, 3, 12, 8], [0, 0, 4, 4]], dtype=torch.float64)
    for source in (coco, voc, table):
        annotations = read_boxes(source)
        assert torch.equal(annotations.for_image(Path("x/a.jpg")), expected), source
        assert torch.equal(annotations.for_image(Path("a.png")), expected)  # matched by stem
        assert annotations.labels["a.jpg"] == ["cat", "dog"]
    assert read_boxes(coco).for_image(Path("c.png")) is None


def test_bad_annotations_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CamkitError, match="not a COCO annotation file"):
        read_boxes(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("file,x0\na.png,1,2\n")
    with pytest.raises(CamkitError, match="expected file,x0,y0,x1,y1"):
        read_boxes(tmp_path / "bad.csv")
    (tmp_path / "bad.txt").write_text("")
    with pytest.raises(CamkitError, match="unknown format"):
        read_boxes(tmp_path / "bad.txt")
    with pytest.raises(CamkitError, match="no such file"):
        read_boxes(tmp_path / "missing.json")


def test_masks_by_stem_and_box_scaling(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    assert find_mask(tmp_path, Path("images/a.jpg")) == tmp_path / "a.png"
    assert find_mask(tmp_path, Path("b.jpg")) is None
    scaled = scale_boxes(torch.tensor([[10.0, 20, 30, 40]]), (100, 50), (50, 100))
    assert scaled.tolist() == [[20.0, 10.0, 60.0, 20.0]]
