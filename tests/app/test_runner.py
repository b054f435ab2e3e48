"""The folder run's CPU sharing and visibility: the thread budget, the progress bar within a batch, --samples."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm import tqdm

import camkit
from camkit.app import runner
from camkit.cli import main


@pytest.fixture
def no_thread_settings(monkeypatch) -> None:
    monkeypatch.delenv("CAMKIT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(("cores", "expected"), [
    (1, runner.ThreadBudget(workers=0, torch_threads=1, writers=1)),
    (2, runner.ThreadBudget(workers=0, torch_threads=2, writers=1)),
    (4, runner.ThreadBudget(workers=1, torch_threads=3, writers=1)),
    (16, runner.ThreadBudget(workers=4, torch_threads=12, writers=2)),
])
def test_the_budget_never_oversubscribes_the_cores(no_thread_settings, cores, expected) -> None:
    budget = runner.thread_budget(cores)
    assert budget == expected
    assert budget.workers + budget.torch_threads <= cores


def test_flags_then_environment_override_the_budget(no_thread_settings, monkeypatch) -> None:
    assert runner.thread_budget(8, workers=0, threads=3) == runner.ThreadBudget(0, 3, 2)
    monkeypatch.setenv("CAMKIT_THREADS", "5")
    assert runner.thread_budget(8).torch_threads == 5
    assert runner.thread_budget(8, threads=2).torch_threads == 2  # the flag wins over the environment
    monkeypatch.setenv("CAMKIT_THREADS", "many")
    with pytest.raises(camkit.CamkitError, match="CAMKIT_THREADS"):
        runner.thread_budget(8)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks on this platform")
def test_usable_cores_follow_the_affinity_mask() -> None:
    assert runner.usable_cores() == len(os.sched_getaffinity(0))


def _pictures(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def test_one_batch_shows_progress_within_it_and_torch_threads_are_restored(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(runner, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(runner, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1e-9))  # draw every update
    folder = _pictures(tmp_path / "in", 4)
    threads = torch.get_num_threads()
    assert main(["overlay", str(folder), "-o", str(tmp_path / "out"), "--method", "gradcam,scorecam",
                 "--input-size", "32", "--workers", "0", "--threads", "1", "--batch-size", "4"]) == 0
    assert torch.get_num_threads() == threads
    shown = capsys.readouterr().err
    positions = [float(value) for value in re.findall(r"(\d+\.\d)/4 img", shown)]
    assert positions[-1] == 4.0 and "img/s" in shown
    # Inside the one batch: Grad-CAM's half, then Score-CAM's masked copies chunk by chunk.
    inside = sorted({value for value in positions if 0 < value < 4})
    assert 2.0 in inside and any(2.0 < value < 4.0 for value in inside), shown


def test_quiet_or_no_terminal_shows_no_bar(tmp_path, monkeypatch, capsys) -> None:
    folder = _pictures(tmp_path / "in", 2)
    assert main(["overlay", str(folder), "-o", str(tmp_path / "out"), "--input-size", "16", "--workers", "0"]) == 0
    assert "img/s" not in capsys.readouterr().err  # stderr is not a terminal here
    monkeypatch.setattr(runner, "stderr_is_terminal", lambda: True)
    assert main(["overlay", str(folder), "-o", str(tmp_path / "out2"), "--input-size", "16", "--workers", "0",
                 "--quiet"]) == 0
    assert "img/s" not in capsys.readouterr().err


def test_samples_set_the_sampling_methods_only(tmp_path) -> None:
    folder = _pictures(tmp_path / "in", 1)
    job = runner.OverlayJob(inputs=[str(folder)], output=tmp_path / "out", method="sscam,iscam,smoothgradcam++,gradcam",
                            samples=2)
    explainers = runner.plan(job).explainers
    assert [explainers[name].n_samples for name in ("sscam", "iscam", "smoothgradcam++")] == [2, 2, 2]
    with pytest.raises(camkit.CamkitError, match="--samples"):
        runner.plan(runner.OverlayJob(inputs=[str(folder)], output=tmp_path / "out", samples=0))


def test_an_image_already_at_the_input_size_is_not_resampled_and_equals_the_resampled_one() -> None:
    image = torch.randint(0, 256, (3, 24, 20), dtype=torch.uint8)
    resampled = torch.nn.functional.interpolate(
        image[None].float() / 255, size=(24, 20), mode="bilinear", antialias=True, align_corners=False
    )[0]
    assert torch.equal(runner.resized_to(image, (24, 20)), resampled)
    shrunk = runner.resized_to(image, (12, 10))
    assert shrunk.shape == (3, 12, 10) and torch.allclose(shrunk.mean(), image.float().mean() / 255, atol=1e-3)


@pytest.mark.skipif(not hasattr(os, "setpriority") or not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_writer_threads_run_at_a_lower_priority_than_the_model(tmp_path) -> None:
    import threading

    manifest = runner.Manifest(tmp_path, runner.distributed.Ranks())
    seen: list[int] = []

    def record() -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with runner.Writers(manifest, runner.Tally(), pending=2, threads=1) as writers:
        writers.submit({"input": "x", "output": "y", "method": "gradcam", "status": "ok"}, record)
    manifest.finish()
    assert seen == [min(19, caller + runner.WRITER_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller  # the model's thread is untouched


def test_method_all_runs_sess_with_samples_as_its_scales(tmp_path) -> None:
    # SESS costs a forward and its base's passes per patch: 122 per 64 x 64 demo image at its paper's 12 scales.
    # `all` includes it like the sampling methods, and --samples (README's first command: 2) sets its scales.
    folder = _pictures(tmp_path / "in", 1)
    cheap = runner.plan(runner.OverlayJob(inputs=[str(folder)], output=tmp_path / "out", method="all", samples=2))
    assert cheap.explainers["sess"].num_scales == 2 and cheap.explainers["sscam"].n_samples == 2
    assert cheap.explainers["sess"].patch_grid((64, 64)).count == 1 + 4
    own = runner.plan(runner.OverlayJob(inputs=[str(folder)], output=tmp_path / "out", method="all"))
    assert own.explainers["sess"].num_scales == 12 and own.explainers["sess"].patch_grid((64, 64)).count == 122


def test_two_runs_probing_one_output_folder_remove_only_their_own_probe(tmp_path, monkeypatch) -> None:
    """The race CI met: another run's probe removal (its probe once shared rank 0's name) took ours."""
    from camkit.app import distributed

    written = runner.write_atomically

    def write_then_the_other_run_cleans_up(path: Path, data: bytes) -> None:
        written(path, data)
        (path.parent / ".camkit-write-test-0").unlink(missing_ok=True)  # the other run's probe, rank 0

    monkeypatch.setattr(runner, "write_atomically", write_then_the_other_run_cleans_up)
    out = tmp_path / "out"
    runner._prepare_output(out, distributed.Ranks())
    assert out.is_dir()
    assert not list(out.iterdir())
