"""``OUT/.evaluation``: records round-trip, other settings start afresh, a damaged file costs only its records."""
from __future__ import annotations

import logging

import torch

from camkit.app.evaluation_store import EvaluationStore, ImageRecord


def _record(value: float) -> ImageRecord:
    return ImageRecord({"sparseness": value}, torch.tensor([[True, False]]), torch.ones(2, 3, dtype=torch.float64), 0.5)


def test_records_round_trip_per_method_and_rank(tmp_path) -> None:
    settings = {"model": None, "steps": 2}
    first = EvaluationStore(tmp_path, settings, rank=0)
    first.add("gradcam++", {"a.png": _record(0.1)})
    first.add("gradcam++", {"b.png": _record(0.2)})  # a file of its own: the first stays
    assert len(list(first.folder.glob("gradcam++.rank0.*.pt"))) == 2
    EvaluationStore(tmp_path, settings, rank=1).add("gradcam++", {"c.png": _record(0.3)})
    loaded = EvaluationStore(tmp_path, settings, rank=0).load("gradcam++")
    assert sorted(loaded) == ["a.png", "b.png", "c.png"]  # every rank's file is read
    assert loaded["b.png"].values == {"sparseness": 0.2} and loaded["b.png"].seconds == 0.5
    assert torch.equal(loaded["a.png"].box_hits, torch.tensor([[True, False]]))
    assert EvaluationStore(tmp_path, settings, rank=0).load("eigencam") == {}
    assert EvaluationStore(tmp_path, {"model": None, "steps": 3}, rank=0).load("gradcam++") == {}


def test_a_damaged_file_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    store = EvaluationStore(tmp_path, {}, rank=0)
    store.add("gradcam", {"a.png": _record(0.1)})
    EvaluationStore(tmp_path, {}, rank=1).add("gradcam", {"b.png": _record(0.2)})
    (damaged,) = store.folder.glob("gradcam.rank1.*.pt")
    damaged.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="camkit"):
        loaded = EvaluationStore(tmp_path, {}, rank=0).load("gradcam")
    assert list(loaded) == ["a.png"]
    assert "its images are scored again" in caplog.text
