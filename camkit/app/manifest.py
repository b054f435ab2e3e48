"""``OUT/manifest.csv``: one row per (input, method), updated in place, never rewritten from scratch.

A run upserts its rows into what the file already holds: a rerun or a resume
keeps earlier predictions and scores, a run with another method keeps the
first method's rows. Rows reach the file while the run goes on (at most a few
seconds behind, and at once when it ends or is interrupted). Under torchrun
each rank keeps its own part file beside the manifest and rank 0 merges all
parts, oldest first, once every rank is done; parts a crashed run left behind
are merged too, so the rows they hold are not lost.

``input`` and ``output`` are paths relative to the output folder, so a
folder moved together with its inputs (or alone, for its outputs) still
works; manifests of earlier versions, whose outputs were absolute, are read
and rewritten that way.

File names that are not valid UTF-8 are written with Python's
``surrogateescape``, so the manifest round-trips the bytes the names had.
"""
from __future__ import annotations

import csv
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CamkitError
from . import distributed
from .io import write_atomically

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("input", "output", "method", "predicted_class", "predicted_name", "score",
                   "explained_class", "status", "error")
SKIPPED = "skipped (exists)"
FLUSH_SECONDS = 2.0

Row = dict[str, Any]


def key_of(row: Row) -> tuple[str, str]:
    return str(row["input"]), str(row["method"])


def check_owned(path: Path) -> None:
    """Refuse to touch a ``manifest.csv`` that camkit did not write."""
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
            header = next(csv.reader(file), [])
    except OSError as error:
        raise CamkitError(f"cannot read {path}: {error.strerror or error}") from None
    if tuple(header) != MANIFEST_FIELDS:
        raise CamkitError(
            f"{path} exists and is not a camkit manifest (its first line is {','.join(header)[:80]!r}); "
            "camkit never overwrites it: choose another output folder with -o, or move that file."
        )


def upsert(rows: dict[tuple[str, str], Row], row: Row) -> None:
    """Insert or replace a row; a 'skipped' row never replaces what an earlier run recorded."""
    key = key_of(row)
    if row["status"] == SKIPPED and key in rows:
        return
    rows[key] = {field: row.get(field, "") for field in MANIFEST_FIELDS}


def relative_paths(row: Row, folder: Path) -> Row:
    """``row`` with ``input`` and ``output`` relative to ``folder``; a path already relative is taken as relative to it.

    A row of an earlier version (absolute ``output``; ``input`` as given on the command line, relative to the
    current folder) is converted too.
    """
    output, source = str(row.get("output") or ""), str(row.get("input") or "")
    earlier = os.path.isabs(output) or (not output and source and not os.path.isabs(source)
                                        and not (folder / source).exists() and os.path.exists(source))
    if not earlier and not os.path.isabs(source):
        return row
    converted = dict(row)
    if output:
        converted["output"] = os.path.relpath(output, folder)
    if source:
        converted["input"] = os.path.relpath(os.path.abspath(source), folder)
    return converted


def read_rows(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        return list(csv.DictReader(file))


def write_rows(path: Path, rows: list[Row]) -> None:
    """Rows sorted by (input, method), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    writer.writerows(sorted(rows, key=key_of))
    write_atomically(path, buffer.getvalue().encode("utf-8", errors="surrogateescape"))


class Manifest:
    """This run's rows, upserted into the manifest as they finish (thread-safe: writer threads add rows)."""

    def __init__(self, out: Path, ranks: distributed.Ranks) -> None:
        self.path, self.ranks = out / MANIFEST_NAME, ranks
        check_owned(self.path)
        self.part = out / f".manifest-part-{ranks.rank:05d}-of-{ranks.world:05d}.csv"
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], Row] = {}
        # What this process writes over must already be in it: the manifest for a single process,
        # under torchrun the part a crashed run of the same rank left behind.
        earlier = self.path if ranks.world == 1 else self.part
        if earlier.exists():
            for row in read_rows(earlier):
                upsert(self._rows, relative_paths(row, out))
        self._flushed_at = 0.0
        self.added: list[Row] = []

    def add(self, row: Row) -> None:
        row = relative_paths(row, self.path.parent)
        with self._lock:
            upsert(self._rows, row)
            self.added.append(row)
        if time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what is known now: the manifest itself, or this rank's part under torchrun."""
        with self._lock:
            rows = list(self._rows.values())
            self._flushed_at = time.monotonic()
            write_rows(self.path if self.ranks.world == 1 else self.part, rows)

    def finish(self) -> None:
        """The last flush; under torchrun, rank 0 then merges every part into the manifest."""
        self.flush()
        if self.ranks.world == 1:
            return
        distributed.barrier(self.ranks)
        if self.ranks.is_main:
            merge_parts(self.path)


def merge_parts(path: Path) -> None:
    """Fold every rank's part file (oldest first, stale ones of a crashed run included) into the manifest."""
    merged: dict[tuple[str, str], Row] = {}
    if path.exists():
        for row in read_rows(path):
            upsert(merged, relative_paths(row, path.parent))
    parts = sorted(path.parent.glob(".manifest-part-*-of-*.csv"), key=lambda part: part.stat().st_mtime_ns)
    for part in parts:
        for row in read_rows(part):
            upsert(merged, row)
    write_rows(path, list(merged.values()))
    for part in parts:
        part.unlink(missing_ok=True)
