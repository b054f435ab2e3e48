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


def test_nifti_volumes_are_read_in_canonical_orientation(tmp_path) -> None:
    nibabel = __import__("pytest").importorskip("nibabel")
    from camkit.app.io import read_volume

    voxels = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])  # the file's first axis runs right to left
    nibabel.save(nibabel.Nifti1Image(voxels, flipped), tmp_path / "scan.nii.gz")
    volume = read_volume(tmp_path / "scan.nii.gz")
    assert volume.shape == (1, 4, 3, 2)
    np.testing.assert_array_equal(volume[0].numpy(), voxels[::-1])


def test_load_images_gives_a_batch_and_the_originals(tmp_path) -> None:
    import torch
    import torchvision

    import camkit

    rng = np.random.default_rng(0)
    for name, shape in (("b.png", (30, 40, 3)), ("a.jpg", (50, 20, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / name)
    batch, originals = camkit.load_images(tmp_path, size=32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert [tuple(image.shape) for image in originals] == [(3, 50, 20), (3, 30, 40)]  # sorted: a.jpg, b.png
    plain, _ = camkit.load_images([tmp_path / "b.png"], size=(16, 24), normalize="none")
    assert plain.shape == (1, 3, 16, 24) and 0 <= float(plain.min()) and float(plain.max()) <= 1
    custom, _ = camkit.load_images(tmp_path / "b.png", size=16, normalize=((0.5,) * 3, (0.5,) * 3))
    torch.testing.assert_close(custom, plain_16 := (camkit.load_images(tmp_path / "b.png", size=16,
                                                                       normalize="none")[0] - 0.5) / 0.5)
    assert plain_16.shape == (1, 3, 16, 16)
    weights = torchvision.models.ResNet18_Weights.DEFAULT  # its transforms only; nothing is downloaded
    prepared, _ = camkit.load_images(tmp_path / "b.png", normalize=weights)
    assert prepared.shape == (1, 3, 224, 224)
    with __import__("pytest").raises(camkit.CamkitError, match="finite and positive"):
        camkit.load_images(tmp_path, normalize=((0, 0, 0), (1, 0, 1)))


def test_a_huge_image_is_reduced_before_conversion_with_one_line(tmp_path, caplog) -> None:
    import logging
    import subprocess
    import sys

    Image.new("L", (3000, 2000), 90).save(tmp_path / "big.png")
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(tmp_path / "big.jpg")
    with caplog.at_level(logging.WARNING, logger="camkit"):
        png, jpeg = read_rgb(tmp_path / "big.png", max_pixels=1_000_000), read_rgb(tmp_path / "big.jpg", max_pixels=1_000_000)
    assert png.shape == (3, 667, 1000) and int(png[0, 0, 0]) == 90  # factor 3, the smallest that fits 6 MP in 1
    assert jpeg.shape[1] * jpeg.shape[2] <= 1_000_000 and abs(int(jpeg[2, 5, 5]) - 30) <= 2
    assert len(caplog.records) == 2 and "drawn at 1000 x 667" in caplog.records[0].getMessage()
    # The audit's 10000 x 10000 grey PNG (120 KB on disk): the peak grows by about the grey decode, not the
    # 5.8 GB it took when the full image was converted to RGB and drawn.
    Image.new("L", (10000, 10000), 128).save(tmp_path / "huge.png")
    script = ("import resource, warnings, sys\nfrom camkit.app.io import read_rgb\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"image = read_rgb(__import__('pathlib').Path({str(tmp_path / 'huge.png')!r}))\n"
              "print(tuple(image.shape), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    process = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script], capture_output=True,
                             text=True, timeout=120)
    shape, grown_mb = process.stdout.split(") ")
    assert shape == "(3, 3334, 3334" and int(grown_mb) < 250, process.stdout + process.stderr
    assert "DecompressionBomb" not in process.stderr and process.stderr.count("camkit") <= 1
