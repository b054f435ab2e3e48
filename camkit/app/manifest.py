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

A detector's run has one row per (input, method, detection): ``detection`` is
its index (best first), ``x0, y0, x1, y1`` its box in the image's own pixels,
``predicted_class``/``explained_class`` its label, ``predicted_name`` the
label's name, ``score`` its score, ``output`` the file that shows it (its own
with ``--per-detection``, else the image's overlay) and ``overlay`` the image's
overlay with every box; an image with no detection has one row whose
``detection`` is empty. The detection columns follow the classifier's, and a
manifest without detection rows has the classifier's columns only, as before.
The rows of one (input, method) are one group: a run that explains the image
again replaces the whole group, so detections an earlier run found and this one
does not are dropped.

File names that are not valid UTF-8 are written with Python's
``surrogateescape``, so the manifest round-trips the bytes the names had.

Several runs may write into one output folder at once: every flush takes an
exclusive lock on ``OUT/.manifest.lock``, reads the file again and upserts
this run's rows into what it holds, so no run's rows are lost. A damaged
manifest (a row cut short, an unterminated quote, NUL bytes, a score that is
not a number) is read row by row: every row that parses is kept, values that
do not parse are cleared, and what was dropped is reported in one line. A
manifest that cannot be written (a full disk) is one line and exit status 1;
the previous file stays intact, and the rows are written at the next chance.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CamkitError
from . import distributed
from .io import write_atomically

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = (
    "input",
    "output",
    "method",
    "predicted_class",
    "predicted_name",
    "score",
    "explained_class",
    "status",
    "error",
)
# A detector's rows carry these after the classifier's columns (written only when a row has them).
DETECTION_FIELDS = ("detection", "x0", "y0", "x1", "y1", "overlay")
ALL_FIELDS = MANIFEST_FIELDS + DETECTION_FIELDS
SKIPPED = "skipped (exists)"
FLUSH_SECONDS = 2.0
LOCK_NAME = ".manifest.lock"
# Columns that hold numbers; a value there that is not one is cleared when the manifest is read.
_INTEGER_FIELDS = ("predicted_class", "explained_class", "detection")
_FLOAT_FIELDS = ("score", "x0", "y0", "x1", "y1")
# A row broken across lines by a quoted newline spans at most this many lines; an unterminated quote
# that would swallow more is a damaged row, and reading goes on at the next line.
_MAX_ROW_LINES = 8

logger = logging.getLogger("camkit")

Row = dict[str, Any]
# The manifest's rows by (input, method), then by detection index ("" for a classifier's row).
Table = dict[tuple[str, str], dict[str, Row]]


def key_of(row: Mapping[str, Any]) -> tuple[str, str]:
    return str(row["input"]), str(row["method"])


def is_detection(row: Row) -> bool:
    """Whether ``row`` is a detector's (it has a value in a detection column)."""
    return any(str(row.get(field) or "") != "" for field in DETECTION_FIELDS)


def _fields_of(row: Row) -> tuple[str, ...]:
    return ALL_FIELDS if is_detection(row) else MANIFEST_FIELDS


def check_owned(path: Path) -> None:
    """Refuse to touch a ``manifest.csv`` that camkit did not write."""
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
            header = next(csv.reader(file), [])
    except OSError as error:
        raise CamkitError(f"cannot read {path}: {error.strerror or error}") from None
    if tuple(header) not in (MANIFEST_FIELDS, ALL_FIELDS):
        raise CamkitError(
            f"{path} exists and is not a camkit manifest (its first line is {','.join(header)[:80]!r}); "
            "camkit never overwrites it: choose another output folder with -o, or move that file."
        )


def upsert(rows: Table, row: Row) -> None:
    """Insert or replace a row of one source (a file, a run); a 'skipped' row never replaces what its group holds.

    A row without a detection index stands for its whole (input, method) group (a classifier's row, an error,
    an image without detections); a detection's row joins the group's other detections.
    """
    key = key_of(row)
    group = rows.get(key)
    if row["status"] == SKIPPED and group:
        return
    clean = {field: row.get(field, "") for field in _fields_of(row)}
    detection = str(clean.get("detection", ""))
    if detection == "" or group is None:
        rows[key] = {detection: clean}
    else:
        group.pop("", None)
        group[detection] = clean


def replace_groups(rows: Table, newer: Table) -> None:
    """``newer``'s groups in place of ``rows``' (a re-explained image's detections replace all of its old ones);
    a group that is only 'skipped' keeps what ``rows`` holds."""
    for key, group in newer.items():
        if key in rows and all(row["status"] == SKIPPED for row in group.values()):
            continue
        rows[key] = dict(group)


def flattened(rows: Table) -> list[Row]:
    return [row for group in rows.values() for row in group.values()]


def relative_paths(row: Row, folder: Path) -> Row:
    """``row`` with ``input`` and ``output`` relative to ``folder``; a path already relative is taken as relative to it.

    A row of an earlier version (absolute ``output``; ``input`` as given on the command line, relative to the
    current folder) is converted too.
    """
    output, source = str(row.get("output") or ""), str(row.get("input") or "")
    earlier = os.path.isabs(output) or (
        not output
        and source
        and not os.path.isabs(source)
        and not (folder / source).exists()
        and os.path.exists(source)
    )
    if not earlier and not os.path.isabs(source) and not os.path.isabs(str(row.get("overlay") or "")):
        return row
    converted = dict(row)
    overlay = str(row.get("overlay") or "")
    if overlay and os.path.isabs(overlay):
        converted["overlay"] = os.path.relpath(overlay, folder)
    if output and os.path.isabs(output):
        converted["output"] = os.path.relpath(output, folder)
    if source and (earlier or os.path.isabs(source)):
        converted["input"] = os.path.relpath(os.path.abspath(source), folder)
    return converted


def read_rows(path: Path, *, report: bool = True) -> list[Row]:
    """Every row of a manifest that parses; damaged rows are dropped and bad values cleared, said in one warning."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        lines = file.read().splitlines(keepends=True)
    rows: list[Row] = []
    dropped: list[int] = []
    cleared = 0
    fields = _header_fields(lines[0] if lines else "")
    index = 1  # line 0 is the header
    while index < len(lines):
        parsed = _row_at(lines, index, fields)
        if parsed is None:
            if lines[index].strip():
                dropped.append(index + 1)
            index += 1
            continue
        row, used = parsed
        cleared += _clear_bad_values(row)
        rows.append(row)
        index += used
    if report and (dropped or cleared):
        shown = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
        parts = ([f"dropped {len(dropped)} damaged row(s) (line {shown})"] if dropped else []) + (
            [f"cleared {cleared} value(s) that were not numbers"] if cleared else []
        )
        logger.warning("%s: %s; the rest of the manifest is kept", path, " and ".join(parts))
    return rows


def _header_fields(line: str) -> tuple[str, ...]:
    """The columns a manifest has: with the detection columns, or the classifier's only (also for a damaged header)."""
    try:
        header = next(csv.reader(io.StringIO(line)), [])
    except csv.Error:
        return MANIFEST_FIELDS
    return ALL_FIELDS if tuple(header) == ALL_FIELDS else MANIFEST_FIELDS


def _row_at(lines: list[str], start: int, fields: tuple[str, ...]) -> tuple[Row, int] | None:
    """The row starting at ``lines[start]`` and how many lines it spans, or None if no row parses there."""
    for count in range(1, min(_MAX_ROW_LINES, len(lines) - start) + 1):
        text = "".join(lines[start : start + count])
        if "\0" in text:
            return None
        try:
            records = list(csv.reader(io.StringIO(text), strict=True))
        except csv.Error:
            continue  # an open quote: the row may go on at the next line
        if len(records) == 1 and len(records[0]) == len(fields):
            return dict(zip(fields, records[0])), count
        if len(records) != 1 or len(records[0]) > len(fields):
            return None
    return None


def _clear_bad_values(row: Row) -> int:
    cleared = 0
    for field, kind in [*((name, int) for name in _INTEGER_FIELDS), *((name, float) for name in _FLOAT_FIELDS)]:
        value = row.get(field, "")
        if value == "":
            continue
        try:
            kind(value)
        except ValueError:
            row[field] = ""
            cleared += 1
    return cleared


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the output folder's manifest, across processes (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs into one folder are not serialised there
        yield
        return
    with open(folder / LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sort_key(row: Row) -> tuple[str, str, int]:
    detection = str(row.get("detection") or "")
    return str(row["input"]), str(row["method"]), int(detection) if detection.isdigit() else -1


def write_rows(path: Path, rows: list[Row]) -> None:
    """Rows sorted by (input, method, detection), written atomically; detection columns only when a row has them."""
    buffer = io.StringIO()
    fields = ALL_FIELDS if any(is_detection(row) for row in rows) else MANIFEST_FIELDS
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    ordered: list[Row] = sorted(rows, key=_sort_key)
    writer.writerows(ordered)
    write_atomically(path, buffer.getvalue().encode("utf-8", errors="surrogateescape"))


class Manifest:
    """This run's rows, upserted into the manifest as they finish (thread-safe: writer threads add rows)."""

    def __init__(self, out: Path, ranks: distributed.Ranks) -> None:
        self.path, self.ranks = out / MANIFEST_NAME, ranks
        check_owned(self.path)
        self.part = out / f".manifest-part-{ranks.rank:05d}-of-{ranks.world:05d}.csv"
        self._lock = threading.Lock()
        self._mine: Table = {}  # this run's rows; what the file holds is read at each flush
        # Under torchrun a crashed run of the same rank may have left its part: its rows go on in ours.
        self._carried: Table = {}
        if ranks.world > 1 and self.part.exists():
            for row in read_rows(self.part):
                upsert(self._carried, relative_paths(row, out))
        # What earlier runs recorded (resume asks whether an image's detections are done); reading it
        # also says once, now, what in it is damaged and will be dropped or cleared.
        self.earlier = _rows_on_disk(self.path, report=ranks.is_main)
        replace_groups(self.earlier, self._carried)
        self._flushed_at = 0.0
        self.added: list[Row] = []
        self.write_error: str | None = None  # why the last write failed; None once one succeeds

    def add(self, row: Row) -> None:
        row = relative_paths(row, self.path.parent)
        with self._lock:
            upsert(self._mine, row)
            self.added.append(row)
        if time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what is known now: upserted into the manifest as it is on disk, or this rank's part under torchrun."""
        with self._lock:
            self._flushed_at = time.monotonic()
            try:
                if self.ranks.world > 1:
                    rows = dict(self._carried)
                    replace_groups(rows, self._mine)
                    write_rows(self.part, flattened(rows))
                else:
                    with _locked(self.path.parent):
                        rows = _rows_on_disk(self.path)
                        replace_groups(rows, self._mine)
                        write_rows(self.path, flattened(rows))
            except OSError as error:
                self._write_failed(error)
                return
            self.write_error = None

    def _write_failed(self, error: OSError) -> None:
        reason = error.strerror or str(error)
        if reason != self.write_error:  # one line per cause, not one per flush
            logger.warning(
                "cannot write %s (%s); the previous manifest is intact, and this run's %d row(s) are "
                "written at the next chance (free space and rerun to resume)",
                self.path,
                reason,
                sum(len(group) for group in self._mine.values()),
            )
        self.write_error = reason

    def finish(self) -> None:
        """The last flush; under torchrun, rank 0 then merges every part into the manifest."""
        self.flush()
        if self.ranks.world == 1:
            return
        distributed.barrier(self.ranks)
        if self.ranks.is_main:
            try:
                merge_parts(self.path)
            except OSError as error:
                self._write_failed(error)


def _rows_on_disk(path: Path, *, report: bool = False) -> Table:
    rows: Table = {}
    if path.exists():
        for row in read_rows(path, report=report):  # what is damaged is said once, when the run begins
            upsert(rows, relative_paths(row, path.parent))
    return rows


def merge_parts(path: Path) -> None:
    """Fold every rank's part file (oldest first, stale ones of a crashed run included) into the manifest."""
    with _locked(path.parent):
        merged = _rows_on_disk(path)
        parts = sorted(path.parent.glob(".manifest-part-*-of-*.csv"), key=lambda part: part.stat().st_mtime_ns)
        for part in parts:
            rows: Table = {}
            for row in read_rows(part):
                upsert(rows, relative_paths(row, path.parent))
            replace_groups(merged, rows)
        write_rows(path, flattened(merged))
        for part in parts:
            part.unlink(missing_ok=True)
