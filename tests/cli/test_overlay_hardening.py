"""`camkit overlay` on the bad inputs and first-run paths of issue 23: one line and exit 2, or a sensible result."""
from __future__ import annotations

import csv
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camkit.app.manifest import MANIFEST_FIELDS, write_rows
from camkit.app.models import model_for_listing
from camkit.app.runner import caption_text
from camkit.cli import build_parser, main
from camkit.errors import CamkitError

QUICK = ["--workers", "0", "--quiet"]


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 50)), ("b.png", (30, 30))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("camkit: error:"), err
    return err[0]


def test_target_out_of_range_is_refused_before_anything_is_written(photos, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["overlay", str(photos), "-o", str(out), "--target", "99", *QUICK]) == 2
    assert "--target 99 is out of range: the model has 10 classes" in _one_error_line(capsys)
    assert not out.exists()


def test_a_cpu_device_index_is_one_line(photos, tmp_path, capsys) -> None:
    assert main(["overlay", str(photos), "-o", str(tmp_path / "out"), "--device", "cpu:5", *QUICK]) == 2
    assert "there is one cpu device" in _one_error_line(capsys)


def test_gifs_are_explained_in_folders_as_when_named(photos, tmp_path) -> None:
    frames = [Image.fromarray(np.full((20, 24, 3), value, dtype=np.uint8)) for value in (40, 200)]
    frames[0].save(photos / "c.gif", save_all=True, append_images=frames[1:])
    assert main(["overlay", str(photos), "-o", str(tmp_path / "folder"), *QUICK]) == 0
    assert main(["overlay", str(photos / "c.gif"), "-o", str(tmp_path / "named"), *QUICK]) == 0
    from_folder, named = Image.open(tmp_path / "folder" / "c_gradcam.png"), Image.open(tmp_path / "named" / "c_gradcam.png")
    assert np.array_equal(np.asarray(from_folder), np.asarray(named))


def test_pickled_weights_are_refused_in_whole_sentences(photos, tmp_path, capsys) -> None:
    torch.save(torchvision.models.resnet18(num_classes=3), tmp_path / "whole.pt")
    status = main(["overlay", str(photos), "-o", str(tmp_path / "out"), "--model", "resnet18", "--weights",
                   str(tmp_path / "whole.pt"), *QUICK])
    line = _one_error_line(capsys)
    assert status == 2 and "does not load" in line and "state_dict()" in line and line.endswith(".")
    assert "do those steps" not in line  # torch's advice on switching the check off is not camkit's


def test_weights_none_and_a_failed_download(photos, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "random"
    assert main(["overlay", str(photos / "b.png"), "-o", str(out), "--model", "resnet18", "--weights", "none",
                 "--input-size", "32", *QUICK]) == 0
    assert _manifest(out)[0]["status"] == "ok"
    capsys.readouterr()

    def unreachable(name, weights=None, **_options):
        if weights is not None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        raise AssertionError("the default weights were not asked for")

    monkeypatch.setattr(torchvision.models, "get_model", unreachable)
    assert main(["overlay", str(photos), "-o", str(tmp_path / "out"), "--model", "resnet18", *QUICK]) == 2
    line = _one_error_line(capsys)
    assert "cannot get resnet18's IMAGENET1K_V1 weights" in line and "--weights FILE" in line and "--weights none" in line
    assert "--weights" in build_parser()._subparsers._group_actions[0].choices["overlay"].format_help()


@pytest.mark.parametrize("kind", ["lines", "json-list", "json-mapping"])
def test_class_names_from_a_file(photos, tmp_path, capsys, kind) -> None:
    names = [f"class {index}" for index in range(10)]
    path = tmp_path / ("names.txt" if kind == "lines" else "names.json")
    if kind == "lines":
        path.write_text("\n".join(names) + "\n")
    else:
        path.write_text(json.dumps(names if kind == "json-list" else {str(i): name for i, name in enumerate(names)}))
    out = tmp_path / "out"
    weights = tmp_path / "demo_copy.pt"  # a local checkpoint: it carries no class names
    from camkit.app.demo import load_demo_model

    torch.save(load_demo_model().state_dict(), weights)
    args = ["overlay", str(photos), "-o", str(out), "--weights", str(weights), "--target", "class 7", *QUICK]
    assert main(args + ["--class-names", str(path)]) == 0
    rows = _manifest(out)
    assert {row["explained_class"] for row in rows} == {"7"}
    assert all(row["predicted_name"] == f"class {row['predicted_class']}" for row in rows)


def test_a_class_name_without_names_says_how_to_give_them(photos, tmp_path, capsys) -> None:
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    assert main(["overlay", str(photos), "-o", str(tmp_path / "out"), "--model", "resnet18", "--weights",
                 str(tmp_path / "r18.pt"), "--target", "tench", *QUICK]) == 2
    assert "has no class names" in (line := _one_error_line(capsys)) and "--class-names FILE" in line


def test_one_spelling_of_method_for_overlay_and_evaluate(capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--method", "gradcam"]).methods == "gradcam"
    assert parser.parse_args(["overlay", "x", "-o", "y", "--method", "eigencam"]).method == "eigencam"
    capsys.readouterr()
    assert parser.parse_args(["evaluate", "--methods", "gradcam"]).methods == "gradcam"
    assert "--methods is deprecated; use --method" in capsys.readouterr().err


def test_a_misspelt_model_name_is_suggested_once() -> None:
    with pytest.raises(CamkitError) as error:
        model_for_listing("resnet81")
    suggested = str(error.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert suggested.count("resnet18") == 1 and len(set(suggested)) == len(suggested)


def test_overlays_carry_a_caption_strip_unless_turned_off(photos, tmp_path) -> None:
    assert main(["overlay", str(photos / "a.png"), "-o", str(tmp_path / "plain"), "--no-caption", *QUICK]) == 0
    assert main(["overlay", str(photos / "a.png"), "-o", str(tmp_path / "captioned"), *QUICK]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "a_gradcam.png"))
    captioned = np.asarray(Image.open(tmp_path / "captioned" / "a_gradcam.png"))
    assert plain.shape == (40, 50, 3) and captioned.shape[1] == 50 and captioned.shape[0] > 40
    assert np.array_equal(captioned[:40], plain)  # the overlay itself untouched; the strip goes below
    strip = captioned[40:].astype(int)
    assert (strip < 100).all(axis=2).any()  # text
    assert (strip.max(axis=2) - strip.min(axis=2) > 100).any()  # and the colour bar's saturated colours


def test_caption_text_names_method_class_and_probability() -> None:
    row = {"method": "gradcam", "explained_class": 3, "predicted_class": 3, "score": "0.873"}
    assert caption_text(row, ["zero", "one", "two", "three"]) == "gradcam | explains 3 three (87%)"
    row = {"method": "scorecam", "explained_class": 1, "predicted_class": 3, "score": "0.5"}
    assert caption_text(row, None) == "scorecam | explains 1 | predicted 3 (50%)"


def test_manifest_paths_are_relative_to_the_output_folder(photos, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["overlay", "in", "-o", "out", "--report", *QUICK]) == 0
    rows = _manifest(tmp_path / "out")
    assert {(row["input"], row["output"]) for row in rows} == {
        ("../in/a.png", "a_gradcam.png"), ("../in/b.png", "b_gradcam.png")}
    # A folder moved with its inputs still resumes (nothing redone) and its report still finds the overlays.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "in", moved / "in")
    shutil.move(tmp_path / "out", moved / "out")
    monkeypatch.chdir(moved)
    assert main(["overlay", "in", "-o", "out", "--report", *QUICK]) == 0
    assert _manifest(moved / "out") == rows
    assert 'src="a_gradcam.png"' in (moved / "out" / "report.html").read_text()


def test_a_manifest_with_absolute_outputs_is_read_and_made_relative(photos, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["overlay", "in", "-o", "out", *QUICK]) == 0
    old_rows = [{**row, "input": f"in/{Path(row['input']).name}", "output": str(out / row["output"]),
                 "score": "0.5"} for row in _manifest(out)]  # as an earlier version wrote them
    write_rows(out / "manifest.csv", old_rows)
    assert main(["overlay", "in", "-o", "out", *QUICK]) == 0  # a resume: nothing redone, no row doubled
    rows = _manifest(out)
    assert len(rows) == 2 and all(row["score"] == "0.5" for row in rows)
    assert {row["output"] for row in rows} == {"a_gradcam.png", "b_gradcam.png"}
    assert tuple(rows[0]) == MANIFEST_FIELDS


def test_volume_montages_carry_the_caption_strip_unless_turned_off(tmp_path) -> None:
    from ..helpers import user_code_on_path

    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "scan.npy", np.random.default_rng(0).normal(size=(10, 20, 24)).astype(np.float32))
    args = ["--model", "factory_model:tiny3d", "--method", "gradcam", "--workers", "0", "--quiet"]
    with user_code_on_path():
        torch.manual_seed(0)  # the factory's model is random-init: the same weights in both runs
        assert main(["overlay", str(folder), "-o", str(tmp_path / "plain"), "--no-caption", *args]) == 0
        torch.manual_seed(0)
        assert main(["overlay", str(folder), "-o", str(tmp_path / "captioned"), *args]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "scan_gradcam.png"))
    captioned = np.asarray(Image.open(tmp_path / "captioned" / "scan_gradcam.png"))
    assert plain.shape == (20, 24 + 2 + 24 + 2 + 20 + 2, 3)  # axial, coronal, sagittal with 2-pixel gutters
    assert captioned.shape[1] == plain.shape[1] and captioned.shape[0] > plain.shape[0]
    assert np.array_equal(captioned[:20], plain)  # the montage untouched; the strip goes below
    strip = captioned[20:].astype(int)
    assert (strip < 100).all(axis=2).any()  # text
    assert (strip.max(axis=2) - strip.min(axis=2) > 100).any()  # and the colour bar's saturated colours
    row = _manifest(tmp_path / "captioned")[0]
    assert row["status"] == "ok" and row["method"] == "gradcam" and row["explained_class"]
