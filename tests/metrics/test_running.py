"""Running accumulators: over batches they give the metric of the whole set; NaN counted apart; reset clears."""
from __future__ import annotations

import math

import pytest
import torch

import camkit
from camkit import metrics

from ..helpers import tiny_cnn

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIONS = {"deletion": {"steps": 8}, "insertion": {"steps": 8}, "road_combined": {"percentiles": [30, 70], "noise": 0}}


def test_three_batches_give_the_metric_of_the_concatenated_batch() -> None:
    model = tiny_cnn()
    x, maps, classes = torch.randn(9, 3, 16, 16), torch.rand(9, 16, 16), torch.randint(0, 5, (9,))
    running = metrics.RunningFaithfulness(model, [*OPTIONS, "average_drop", "increase_in_confidence"], OPTIONS)
    for part in range(3):
        rows = slice(3 * part, 3 * part + 3)
        values = running.update(x[rows], maps[rows], classes[rows])
        assert values["deletion"].shape == (3,)
    summary = running.summary()
    for name in (*OPTIONS, "average_drop", "increase_in_confidence"):
        whole = metrics.running.FAITHFULNESS[name](model, x, maps, classes, **OPTIONS.get(name, {}))
        assert summary[name]["mean"] == pytest.approx(whole.double().mean().item(), rel=1e-6, abs=1e-6)
        assert summary[name]["count"] == 9 and summary[name]["nan"] == 0

    masks = torch.rand(9, 16, 16) > 0.5
    localisation = metrics.RunningLocalisation()
    for part in range(3):
        localisation.update(maps[3 * part:3 * part + 3], masks[3 * part:3 * part + 3])
    assert localisation.summary()["pointing_game"]["mean"] == pytest.approx(metrics.pointing_game(maps, masks).mean().item())


def test_nan_is_counted_apart_and_left_out_of_the_mean() -> None:
    running = metrics.Running()
    running.update(drop=torch.tensor([1.0, math.nan, 3.0]))
    running.update(drop=torch.tensor([math.nan, 5.0]), hit=torch.tensor([1.0, 0.0]))
    assert running.summary() == {"drop": {"mean": 3.0, "count": 3, "nan": 2}, "hit": {"mean": 0.5, "count": 2, "nan": 0}}

    model = tiny_cnn()
    maps = torch.rand(3, 16, 16)
    maps[1, 4, 4] = math.nan  # a broken map: that image counts as NaN in every metric, as torchcam discards it
    faithfulness = metrics.RunningFaithfulness(model, ["average_drop"])
    values = faithfulness.update(torch.randn(3, 3, 16, 16), maps, 0)
    assert torch.isnan(values["average_drop"]).tolist() == [False, True, False]
    assert faithfulness.summary()["average_drop"]["nan"] == 1 and faithfulness.summary()["average_drop"]["count"] == 2
    localisation = metrics.RunningLocalisation(["pointing_game"])
    localisation.update(maps, torch.ones(3, 16, 16, dtype=torch.bool))
    assert localisation.summary() == {"pointing_game": {"mean": 1.0, "count": 2, "nan": 1}}


def test_reset_clears_and_an_empty_summary_is_a_clear_error() -> None:
    running = metrics.Running()
    running.update(deletion=torch.tensor([0.5]))
    running.reset()
    with pytest.raises(camkit.CamkitError, match="call update"):
        running.summary()
    running.update(deletion=torch.tensor([0.25, math.nan]))
    assert running.summary() == {"deletion": {"mean": 0.25, "count": 1, "nan": 1}}
    running.update(deletion=torch.tensor([math.nan]))
    assert running.summary()["deletion"] == {"mean": 0.25, "count": 1, "nan": 2}
    with pytest.raises(camkit.CamkitError, match="unknown metrics"):
        metrics.RunningFaithfulness(tiny_cnn(), ["deletion", "road"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_totals_stay_on_the_device() -> None:
    running = metrics.Running()
    running.update(drop=torch.tensor([1.0, math.nan], device="cuda"))
    assert all(tensor.device.type == "cuda" for tensor in running._totals["drop"])
    assert running.summary()["drop"] == {"mean": 1.0, "count": 1, "nan": 1}
