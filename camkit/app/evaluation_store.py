"""``OUT/.evaluation/``: every finished (image, method) score of ``camkit evaluate``, so a rerun reuses them.

Like overlay's manifest, the store is updated as the run goes (after every
batch, atomically) and never rewritten from scratch: an interrupted run
leaves what it finished, and a repeated or resumed run into the same output
folder scores only the images a method lacks. Each image's record holds its
per-image values, its MaxBoxAcc hits and PxAP histograms (the data-set
metrics are sums over images) and its share of the explainer's time, so the
table built from the records equals a fresh run's.

Records are only reused under the same settings: the folder below
``.evaluation`` is named by a hash of everything that changes a number
(model, weights, layer, steps, samples, sigma, annotations, demo set size,
device type). Each batch's records are one file
(``METHOD.rank{R}.{time}-{n}.pt``); under torchrun each rank writes its own
and every rank reads all of them, so a resume may use another number of ranks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CamkitError
from .io import write_atomically

STORE_NAME = ".evaluation"
logger = logging.getLogger("camkit")


@dataclass
class ImageRecord:
    """One image's scores under one method."""

    values: dict[str, float] = field(default_factory=dict)
    box_hits: torch.Tensor | None = None  # (I, T) bool: MaxBoxAcc's hits per IoU and CAM threshold
    pixel_histograms: torch.Tensor | None = None  # (2, bins) float64: PxAP's object and background counts
    seconds: float = 0.0


class EvaluationStore:
    """The records of one output folder under one set of settings, read and written per method and rank."""

    def __init__(self, output: Path, settings: dict[str, Any], rank: int) -> None:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = output / STORE_NAME / digest
        self.rank = rank
        self._written = 0

    def load(self, method: str) -> dict[str, ImageRecord]:
        """Every stored record of ``method`` (all ranks' files); a file that cannot be read is skipped, with a warning."""
        records: dict[str, ImageRecord] = {}
        for path in sorted(self.folder.glob(f"{_safe(method)}.rank*.pt")):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                records.update({key: ImageRecord(**value) for key, value in saved.items()})
            except Exception as error:  # a damaged file only costs its records: they are computed again
                logger.warning("camkit evaluate: cannot read %s (%s); its images are scored again", path, error)
        return records

    def add(self, method: str, records: dict[str, ImageRecord]) -> None:
        """Write one batch's new records of ``method`` as a file of their own (atomically; earlier files stay).

        One small file per batch keeps the writing linear in the run's length
        (rewriting one growing file after every batch would be quadratic).
        """
        buffer = io.BytesIO()
        torch.save({key: asdict(record) for key, record in records.items()}, buffer)
        self._written += 1
        path = self.folder / f"{_safe(method)}.rank{self.rank}.{time.time_ns()}-{self._written}.pt"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(path, buffer.getvalue())
        except OSError as error:
            raise CamkitError(
                f"cannot write the evaluation store {self.folder}: {error.strerror or error}; "
                "free space or choose another --output"
            ) from None


def _safe(method: str) -> str:
    """A method name as a file name (names are identifiers with '+' and '-'; anything else becomes '_')."""
    return "".join(char if char.isalnum() or char in "+-_" else "_" for char in method)
