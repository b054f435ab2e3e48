"""`camkit.load_images` and drawing on what it returns, as the README uses them (issue 23)."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import camkit
from camkit.app.io import seen_part

from ..helpers import tiny_cnn


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 20, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    return tmp_path


def test_an_unreadable_file_is_one_error_or_skipped(folder) -> None:
    with pytest.raises(camkit.CamkitError, match=r"cannot read image .*c\.png.*errors='skip'"):
        camkit.load_images(folder, size=16)
    loaded = camkit.load_images(folder, size=16, errors="skip")
    batch, originals = loaded  # still unpacks as the pair
    assert batch.shape == (2, 3, 16, 16) and len(originals) == 2
    assert [Path(path).name for path in loaded.paths] == ["a.png", "b.png"]
    assert [Path(path).name for path, _ in loaded.skipped] == ["c.png"]
    assert loaded.skipped[0][1].startswith("not an image format PIL can read")


def test_a_failing_pil_plugin_is_reported_as_an_unreadable_image(folder, monkeypatch) -> None:
    # ultralytics registers a HEIF opener that raises ModuleNotFoundError (no pi_heif) on any file PIL cannot
    # identify; the reason must still say the file is not a readable image, whichever package is imported.
    from PIL import Image

    real_open = Image.open

    def open_with_failing_plugin(path, *args, **kwargs):
        if str(path).endswith("c.png"):
            raise ModuleNotFoundError("No module named 'pi_heif'")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_with_failing_plugin)
    loaded = camkit.load_images(folder, size=16, errors="skip")
    assert loaded.skipped == [
        (str(folder / "c.png"), "not an image format PIL can read (ModuleNotFoundError: No module named 'pi_heif')")
    ]
    with pytest.raises(camkit.CamkitError, match="errors='maybe'"):
        camkit.load_images(folder, errors="maybe")


def test_with_display_takes_the_originals_load_images_returns(folder, tmp_path) -> None:
    x, originals = camkit.load_images([folder / "a.png", folder / "b.png"], size=16)
    result = camkit.GradCAM(tiny_cnn().eval()).explain(x)
    shown = result.with_display(originals)
    assert shown.display.shape == (2, 3, 16, 16) and shown.display.dtype == torch.float32
    expected = torch.nn.functional.interpolate(originals[0][None].float() / 255, size=(16, 16), mode="bilinear",
                                               antialias=True, align_corners=False)[0]
    torch.testing.assert_close(shown.display[0], expected)
    saved = shown.save(tmp_path / "saved")  # the folder form: overlays over the originals
    assert len(list(saved.glob("*_overlay.png"))) == 2
    # uint8 batches are 0..255, never read as [0, 1] floats (which posterised them)
    same_size = [image[:, :16, :16] for image in originals]
    stacked = result.with_display(torch.stack(same_size)).display
    torch.testing.assert_close(stacked, torch.stack(same_size).float() / 255)
    with pytest.raises(camkit.CamkitError, match="needs 2 images"):
        result.with_display(originals[:1])


def test_a_weights_enum_crop_gives_originals_aligned_with_the_maps() -> None:
    """The originals are cropped to what the model saw: a marker at the input's centre is at the original's centre."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT  # its transforms only; nothing is downloaded
    image = torch.zeros(3, 300, 500, dtype=torch.uint8)
    seen = seen_part(image, weights.transforms())
    # resize the shorter side 300 -> 256 (scale 0.853), crop 224: 224 / 0.853 = 262.5 of the original, centred
    assert tuple(seen.shape) == (3, 262, 262)
    marked = image.clone()
    marked[:, 140:160, 240:260] = 255  # the original's centre
    model_input = weights.transforms()(marked)
    shown = seen_part(marked, weights.transforms())
    centre_in = model_input[0].float().flatten().argmax()
    row, column = divmod(int(centre_in), 224)
    assert abs(row / 224 - 0.5) < 0.05 and abs(column / 224 - 0.5) < 0.05
    rows, columns = torch.nonzero(shown[0] == 255, as_tuple=True)
    assert abs(float(rows.float().mean()) / shown.shape[1] - 0.5) < 0.02
    assert abs(float(columns.float().mean()) / shown.shape[2] - 0.5) < 0.02


def test_demo_model_and_images_are_public(tmp_path) -> None:
    model = camkit.demo_model()
    x, images, labels = camkit.demo_images(4)
    assert x.shape == (4, 3, 64, 64) and images.dtype == torch.uint8 and labels.shape == (4,)
    result = camkit.GradCAM(model).explain(x, "7")  # the demo's classes are named by their digits
    assert result.targets.tolist() == [7] * 4 and result.class_names[7] == "7"
    assert (model(x).argmax(1) == labels).float().mean() >= 0.5
    assert {"load_images", "demo_model", "demo_images"} <= set(dir(camkit))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args) -> None:
        pass


def test_load_images_reads_urls(folder) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.png"
        from_url, originals = camkit.load_images([url], size=16)
        from_file, _ = camkit.load_images(folder / "a.png", size=16)
        torch.testing.assert_close(from_url, from_file)
        assert tuple(originals[0].shape) == (3, 30, 40)
        with pytest.raises(camkit.CamkitError, match="cannot download .*missing.png .HTTP 404"):
            camkit.load_images(url.replace("a.png", "missing.png"))
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_url_is_one_error(monkeypatch) -> None:
    import urllib.error
    import urllib.request

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(camkit.CamkitError, match="cannot download https://example.org/cat.jpg .*download the image"):
        camkit.load_images("https://example.org/cat.jpg")


def test_progress_is_opt_in_and_counts_every_file(folder, capsys) -> None:
    import io
    import re

    camkit.load_images(folder, size=16, errors="skip")
    assert capsys.readouterr().err == ""  # off by default
    stream = io.StringIO()
    loaded = camkit.load_images(folder, size=16, errors="skip", progress=stream)
    shown = stream.getvalue()
    assert "camkit.load_images" in shown and re.search(r"\b3/3 file\b", shown), shown  # the skipped file counts too
    assert re.search(r"(file/s|s/file)", shown) and re.search(r"\[\d\d:\d\d<\d\d:\d\d", shown), shown  # rate, ETA
    assert len(loaded.originals) == 2 and len(loaded.skipped) == 1
    camkit.load_images(folder, size=16, errors="skip", progress=True)
    assert re.search(r"\b3/3 file\b", capsys.readouterr().err)  # True: on stderr
    with pytest.raises(camkit.CamkitTypeError, match="progress="):
        camkit.load_images(folder, size=16, errors="skip", progress=3)
