"""`camkit overlay` with pixel methods: the signed attribution picture, raw attributions in --save-maps npy."""
from __future__ import annotations

import csv

import numpy as np
import torch
from PIL import Image

from camkit.cli import main
from camkit.viz import attribution_picture

from ..helpers import ROOT


def test_pixel_methods_write_the_attribution_picture_and_raw_attributions(tmp_path) -> None:
    sample = min((ROOT / "assets" / "samples").glob("*.png"))
    out = tmp_path / "out"
    assert main(["overlay", str(sample), "-o", str(out), "--method", "gradcam,guidedgradcam,fullgrad",
                 "--save-maps", "npy", "--workers", "0", "--quiet"]) == 0
    with open(out / "manifest.csv", newline="") as file:
        rows = {row["method"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"gradcam", "guidedgradcam", "fullgrad"} and {r["status"] for r in rows.values()} == {"ok"}
    original = np.asarray(Image.open(sample).convert("RGB"))
    for method, channels in (("guidedgradcam", 3), ("fullgrad", 1)):
        picture = np.asarray(Image.open(out / rows[method]["output"]))
        assert picture.shape == original.shape
        raw = np.load(next(out.glob(f"*{method}*_map.npy")))
        assert raw.ndim == 3 and raw.shape[0] == channels
        if method == "guidedgradcam":
            assert raw.min() < 0 < raw.max()  # signed, raw
    # the CAM keeps its heatmap map: one (H, W) map in [0, 1]
    heat = np.load(out / rows["gradcam"]["output"].replace(".png", "_map.npy"))
    assert heat.ndim == 2 and 0 <= heat.min() and heat.max() <= 1


def test_attribution_picture_is_grey_at_zero_and_brighter_where_positive() -> None:
    attributions = torch.zeros(2, 3, 4, 4)
    attributions[0, :, 1, 1] = 1.0
    picture = attribution_picture(attributions)
    assert picture.shape == (2, 3, 4, 4) and torch.all(picture[1] == 0.5)
    assert picture[0, :, 1, 1].min() > 0.5 > picture[0, :, 0, 0].max() - 1e-3
    grey = attribution_picture(torch.randn(1, 1, 5, 5))
    assert grey.shape == (1, 3, 5, 5) and torch.equal(grey[:, 0], grey[:, 2])
