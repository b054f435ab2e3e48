"""``OUT/manifest.csv``: one row per (input, method) with the prediction, the explained class and the outcome.

Under torchrun every rank writes its own part and rank 0 merges the parts
once all ranks are done.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from . import distributed
from .io import write_atomically

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("input", "output", "method", "predicted_class", "predicted_name", "score",
                   "explained_class", "status", "error")


def write_manifest(out: Path, rows: list[dict[str, Any]], ranks: distributed.Ranks) -> None:
    """This run's rows as ``out/manifest.csv``, merged across ranks."""
    if ranks.world == 1:
        write_rows(out / MANIFEST_NAME, rows)
        return
    part = out / f".manifest-part-{ranks.rank:05d}-of-{ranks.world:05d}.csv"
    write_rows(part, rows)
    distributed.barrier(ranks)
    if ranks.is_main:
        parts = sorted(out.glob(f".manifest-part-*-of-{ranks.world:05d}.csv"))
        merged = [row for path in parts for row in read_rows(path)]
        write_rows(out / MANIFEST_NAME, merged)
        for path in parts:
            path.unlink()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows sorted by (input, method), written atomically."""
    rows = sorted(rows, key=lambda row: (row["input"], row["method"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode("utf-8"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))
