"""Reading images: deep images scaled by their own range; names that stay unique and short."""
from __future__ import annotations

import numpy as np
from PIL import Image

from camkit.app.io import MAX_STEM_BYTES, discover, read_rgb


def test_twelve_bit_data_uses_all_eight_bit_levels(tmp_path) -> None:
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))  # 12-bit data in a 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    pixels = read_rgb(tmp_path / "scan.png")
    assert pixels.shape == (3, 8, 64) and int(pixels.min()) == 0 and int(pixels.max()) == 255
    expected = np.round(ramp[0] / 4095 * 255).astype(np.uint8)
    assert np.abs(pixels[0, 0].numpy().astype(int) - expected.astype(int)).max() <= 1
    Image.fromarray(np.full((4, 4), 3000, dtype=np.uint16)).save(tmp_path / "flat.png")
    assert int(read_rgb(tmp_path / "flat.png").max()) == 0  # no range: black, never a division by zero


def test_names_mirror_the_tree_and_stay_unique(tmp_path) -> None:
    for relative in ("x/a.png", "y/a.png", "x/b.png", "x/b.jpg", "x/deep/c.tif"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / relative)
    one = {source.path.relative_to(tmp_path).as_posix(): source.relative.as_posix()
           for source in discover([str(tmp_path / "x")])}
    assert one == {"x/a.png": "a", "x/b.png": "b_png", "x/b.jpg": "b_jpg", "x/deep/c.tif": "deep/c"}
    two = {source.path.relative_to(tmp_path).as_posix(): source.relative.as_posix()
           for source in discover([str(tmp_path / "x"), str(tmp_path / "y")])}
    assert two["x/a.png"] == "x/a" and two["y/a.png"] == "y/a" and two["x/deep/c.tif"] == "deep/c"
    assert len(set(two.values())) == len(two)
    long = tmp_path / "long"
    long.mkdir()
    for stem in ("é" * 120, "é" * 120 + "x"):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(long / f"{stem}.png")
    names = [source.relative.name for source in discover([str(long)])]
    assert len(set(names)) == 2 and all(len(name.encode()) <= MAX_STEM_BYTES for name in names)
