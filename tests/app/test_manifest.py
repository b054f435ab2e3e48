"""The manifest keeps every row: damaged files are read row by row, runs into one folder share it, a full
disk loses nothing that was there."""
from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest

from camkit.app import manifest as manifest_module
from camkit.app.distributed import Ranks
from camkit.app.manifest import ALL_FIELDS, MANIFEST_FIELDS, SKIPPED, Manifest, read_rows, write_rows

HEADER = ",".join(MANIFEST_FIELDS)


def _row(name: str, method: str = "gradcam", score: str = "0.5") -> dict[str, str]:
    return {"input": name, "output": f"{name}_{method}.png", "method": method, "predicted_class": "1",
            "predicted_name": "one", "score": score, "explained_class": "1", "status": "ok", "error": ""}


def _manifest_text(*lines: str) -> str:
    return "\n".join([HEADER, *lines]) + "\n"


def test_an_unterminated_quote_loses_only_its_own_row(tmp_path, caplog) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(_manifest_text(
        "a.png,a_gradcam.png,gradcam,1,one,0.5,1,ok,",
        'b.png,b_gradcam.png,gradcam,1,"one,0.5,1,ok,',  # the quote never closes
        "c.png,c_gradcam.png,gradcam,2,two,0.75,2,ok,",
        'd.png,d_gradcam.png,gradcam,3,three,0.25,3,error,"two\nlines"',  # a quoted newline is a real row
    ), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="camkit"):
        rows = read_rows(path)
    assert [row["input"] for row in rows] == ["a.png", "c.png", "d.png"]
    assert rows[1]["score"] == "0.75" and rows[2]["error"] == "two\nlines"
    assert len(caplog.records) == 1 and "dropped 1 damaged row(s) (line 3)" in caplog.records[0].getMessage()


def test_nul_bytes_short_rows_and_bad_numbers_are_dropped_or_cleared(tmp_path, caplog) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(_manifest_text(
        "a.png,a_gradcam.png,gradcam,1,one,abc,1,ok,",  # a score that is not a number: cleared, row kept
        "b.png,b_gradcam.png,gra\0dcam,1,one,0.5,1,ok,",
        "c.png,short",
        "d.png,d_gradcam.png,gradcam,x,one,0.5,1,ok,",
        "e.png,e_gradcam.png,gradcam,1,one,0.5,1,ok,",
    ), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="camkit"):
        rows = {row["input"]: row for row in read_rows(path)}
    assert sorted(rows) == ["a.png", "d.png", "e.png"]
    assert rows["a.png"]["score"] == "" and rows["d.png"]["predicted_class"] == "" and rows["e.png"]["score"] == "0.5"
    message = caplog.records[0].getMessage()
    assert len(caplog.records) == 1 and "dropped 2 damaged row(s)" in message and "cleared 2 value(s)" in message


def test_runs_into_one_folder_keep_each_others_rows(tmp_path) -> None:
    first, second = Manifest(tmp_path, Ranks(0, 1)), Manifest(tmp_path, Ranks(0, 1))
    barrier = threading.Barrier(2)

    def run(manifest: Manifest, prefix: str) -> None:
        barrier.wait()
        for index in range(40):
            manifest.add(_row(f"{prefix}{index}.png"))
            manifest.flush()
        manifest.finish()

    threads = [threading.Thread(target=run, args=(m, p)) for m, p in ((first, "x"), (second, "y"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_rows(tmp_path / "manifest.csv")) == 80


def test_a_full_disk_keeps_the_previous_manifest_and_says_so_once(tmp_path, monkeypatch, caplog) -> None:
    path = tmp_path / "manifest.csv"
    write_rows(path, [_row("old.png")])
    before = path.read_bytes()
    manifest = Manifest(tmp_path, Ranks(0, 1))

    def full(target: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module, "write_atomically", full)
    with caplog.at_level(logging.WARNING, logger="camkit"):
        for index in range(3):
            manifest.add(_row(f"new{index}.png"))
            manifest.flush()
    assert path.read_bytes() == before and manifest.write_error == "No space left on device"
    assert len(caplog.records) == 1 and "previous manifest is intact" in caplog.records[0].getMessage()
    monkeypatch.undo()
    manifest.finish()  # space again: every row of the run reaches the file
    assert {row["input"] for row in read_rows(path)} == {"old.png", "new0.png", "new1.png", "new2.png"}
    assert manifest.write_error is None


@pytest.mark.parametrize("world", [2])
def test_torchrun_parts_merge_under_the_lock(tmp_path, world) -> None:
    parts = [Manifest(tmp_path, Ranks(rank, world)) for rank in range(world)]
    for rank, manifest in enumerate(parts):
        manifest.add(_row(f"r{rank}.png"))
        manifest.flush()
    manifest_module.merge_parts(tmp_path / "manifest.csv")
    assert {row["input"] for row in read_rows(tmp_path / "manifest.csv")} == {"r0.png", "r1.png"}
    assert not list(tmp_path.glob(".manifest-part-*"))


def _detection(name: str, index: int, label: int = 2, method: str = "gradcam") -> dict[str, str]:
    return {**_row(name, method), "output": f"{name}_{method}_det{index:02d}.png", "predicted_class": str(label),
            "explained_class": str(label), "predicted_name": "two", "score": f"{0.9 - index / 10:.6f}",
            "detection": str(index), "x0": "1.0", "y0": "2.0", "x1": "30.5", "y1": "40.0",
            "overlay": f"{name}_{method}.png"}


def _header(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def test_a_classifier_manifest_keeps_its_columns_and_detection_rows_add_theirs(tmp_path) -> None:
    path = tmp_path / "manifest.csv"
    manifest = Manifest(tmp_path, Ranks(0, 1))
    manifest.add(_row("cat.png"))
    manifest.finish()
    assert _header(path) == HEADER  # as before detectors: nothing added to a classifier's manifest
    manifest = Manifest(tmp_path, Ranks(0, 1))  # a detector run into the same folder
    for index in range(2):
        manifest.add(_detection("street.png", index))
    manifest.finish()
    assert _header(path) == ",".join(ALL_FIELDS)
    rows = read_rows(path)
    assert [(row["input"], row["detection"]) for row in rows] == [("cat.png", ""), ("street.png", "0"),
                                                                  ("street.png", "1")]
    assert {key: rows[0][key] for key in MANIFEST_FIELDS} == _row("cat.png")  # the classifier's row unchanged
    assert rows[2] == _detection("street.png", 1)
    assert Manifest(tmp_path, Ranks(0, 1)).earlier[("street.png", "gradcam")]["1"] == _detection("street.png", 1)


def test_a_detection_rows_bad_numbers_are_cleared_like_a_classifiers(tmp_path) -> None:
    path = tmp_path / "manifest.csv"
    write_rows(path, [_detection("a.png", 0)])
    path.write_text(path.read_text(encoding="utf-8").replace(",30.5,", ",wide,"), encoding="utf-8")
    (row,) = read_rows(path, report=False)
    assert row["x1"] == "" and row["x0"] == "1.0" and row["detection"] == "0"


def test_an_image_explained_again_replaces_all_of_its_detections_and_skipped_keeps_them(tmp_path) -> None:
    path = tmp_path / "manifest.csv"
    write_rows(path, [_detection("a.png", index) for index in range(3)] + [_detection("b.png", 0)])
    manifest = Manifest(tmp_path, Ranks(0, 1))
    manifest.add(_detection("a.png", 0, label=5))  # this run finds one detection where the last found three
    manifest.add({**_row("b.png"), "output": "b.png_gradcam.png", "status": SKIPPED})
    manifest.finish()
    rows = read_rows(path)
    assert [(row["input"], row["detection"], row["predicted_class"]) for row in rows] == [
        ("a.png", "0", "5"), ("b.png", "0", "2")]
    # An error while re-explaining replaces the image's detections with the one error row.
    manifest = Manifest(tmp_path, Ranks(0, 1))
    manifest.add({**_row("a.png"), "status": "error", "error": "cannot explain", "output": ""})
    manifest.finish()
    assert [(row["input"], row["detection"], row["status"]) for row in read_rows(path)] == [
        ("a.png", "", "error"), ("b.png", "0", "ok")]


def test_torchrun_parts_with_detection_rows_merge_group_by_group(tmp_path) -> None:
    write_rows(tmp_path / "manifest.csv", [_detection("a.png", index) for index in range(3)])
    parts = [Manifest(tmp_path, Ranks(rank, 2)) for rank in range(2)]
    parts[0].add(_detection("a.png", 0, label=7))
    parts[1].add(_detection("b.png", 0))
    parts[1].add(_detection("b.png", 1))
    for manifest in parts:
        manifest.flush()
    manifest_module.merge_parts(tmp_path / "manifest.csv")
    rows = read_rows(tmp_path / "manifest.csv")
    assert [(row["input"], row["detection"], row["predicted_class"]) for row in rows] == [
        ("a.png", "0", "7"), ("b.png", "0", "2"), ("b.png", "1", "2")]
