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
from camkit.app.manifest import MANIFEST_FIELDS, Manifest, read_rows, write_rows

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
