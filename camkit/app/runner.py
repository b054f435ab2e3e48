"""The folder run behind ``camkit overlay``: heatmaps over files, folders and globs of images and volumes.

What it promises (DESIGN.md, "The command line"): everything that can be
checked before the model runs is checked first (:func:`plan`), before anything
is written; one output per (input, method), never two inputs on one name;
the manifest is upserted as files finish (:mod:`camkit.app.manifest`); a file
that cannot be read or explained is one stderr line and one manifest row, and
a failing batch is retried image by image so that every other file is still
written. Decoding runs in DataLoader workers, the explainers on batches on the
device, and blending, PNG encoding and writing in writer threads. Files are
written atomically, so a rerun resumes an interrupted job: it redoes a file
unless every output it should have (overlays and saved maps) exists.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import BoundedSemaphore, Lock
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import progress
from ..detection import detector_of
from ..errors import CamkitError, model_code, raised_by_model
from ..explainers import METHODS, Explainer, create, methods_for
from ..layers import dry_run
from ..modes import evaluation
from ..results import Explanation
from ..targets import SegmentationTarget, logits_of
from ..viz import attribution_picture, colormap_lut, detection_overlays, overlay, to_uint8_hwc
from ..viz.captions import captioned
from . import distributed, report, volumes
from .io import (
    IMAGE_SUFFIXES,
    Source,
    discover,
    encode_npy,
    encode_png,
    is_volume,
    read_rgb,
    read_volume,
    remove_stale_parts,
    write_atomically,
)
from .manifest import SKIPPED, Manifest, check_owned
from .models import LoadedModel, input_channels, load_model, read_class_names, resolve_device

logger = logging.getLogger("camkit")

NORMALISATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": ((0.0,) * 3, (1.0,) * 3)}
MIN_INPUT_SIZE = 8
WRITER_NICENESS = 10  # see _lower_priority
# Beside an npy map: the (K,) weights a channel-weighted method summed the layer's channels with.
CHANNEL_WEIGHTS_SUFFIX = "_channel_weights.npy"
# What one bad input can raise, besides anything the model's own forward or backward raises
# (errors.raised_by_model); any other exception is a bug in camkit and keeps its traceback.
EXPLAIN_ERRORS = (CamkitError, RuntimeError)


@dataclass
class OverlayJob:
    """What one ``camkit overlay`` run is asked to do (the CLI's flags, parsed)."""

    inputs: list[str]
    output: Path
    method: str = "gradcam"
    model: str | None = None
    weights: str | None = None
    layer: str | None = None
    target: str = "top1"
    input_size: int | None = None
    normalize: str | None = None
    alpha: float = 0.5
    colormap: str = "jet"
    save_maps: str | None = None
    batch_size: int = 16
    device: str = "auto"
    workers: int | None = None  # None: from the thread budget
    overwrite: bool = False
    quiet: bool = False
    # n_samples of the methods that draw samples (SS-CAM, IS-CAM, Smooth Grad-CAM++); SESS's num_scales
    samples: int | None = None
    threads: int | None = None  # torch's intra-op threads; None: from the thread budget
    report: bool = False
    label_from_folder: bool = False
    # Detectors (torchvision, ultralytics YOLO, Hugging Face DETR): which detections, and one file each.
    score_threshold: float = 0.25
    max_detections: int = 20
    per_detection: bool = False
    detection_score: str = "box"  # "mask": an instance segmenter's mask score (Mask R-CNN, YOLO-seg)
    class_names: str | None = None
    caption: bool = True


@dataclass(frozen=True)
class ThreadBudget:
    """How the run shares the CPU cores it may use: decoding workers, torch's intra-op threads, writer threads."""

    workers: int
    torch_threads: int
    writers: int


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and ``taskset`` set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_budget(cores: int, *, workers: int | None = None, threads: int | None = None) -> ThreadBudget:
    """Workers, torch threads and writers sized together so that they do not oversubscribe ``cores``.

    The model's forwards and backwards are the work: torch gets every core the
    workers do not. Decoding and resizing is cheap next to explaining, so
    workers get a quarter of the cores (none up to 3 cores: decoding runs in
    the main process between batches), writers (blending and PNG encoding,
    which release the GIL) one thread up to 4 cores and two above. Each part
    is overridden by ``--workers``, ``--threads`` (or ``CAMKIT_THREADS``) and
    ``OMP_NUM_THREADS`` for torch.
    """
    cores = max(1, cores)
    chosen_workers = workers if workers is not None else (cores // 4 if cores >= 4 else 0)
    if threads is None and os.environ.get("CAMKIT_THREADS", "").strip():
        threads = _positive_int(os.environ["CAMKIT_THREADS"], "CAMKIT_THREADS")
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip():
        threads = torch.get_num_threads()  # torch read OMP_NUM_THREADS at start-up; the user chose it
    torch_threads = threads if threads is not None else max(1, cores - chosen_workers)
    return ThreadBudget(chosen_workers, torch_threads, 1 if cores <= 4 else 2)


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CamkitError(f"{name} must be a positive number of threads, got {text!r}")
    return value


@dataclass
class Plan:
    """A job with everything checked and resolved, before anything is written."""

    job: OverlayJob
    out: Path
    loaded: LoadedModel
    explainers: dict[str, Explainer]
    size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    target: int | None
    sources: list[Source]
    threads: ThreadBudget = field(default_factory=lambda: thread_budget(usable_cores()))

    @property
    def detector(self) -> bool:
        """Whether the model is a detector: explained detection by detection, a manifest row each."""
        return detector_of(self.loaded.model) is not None

    def outputs(self, source: Source, method: str) -> list[Path]:
        """Every file one (input, method) should have: the overlay and, if asked, the saved map.

        With npy maps a channel-weighted method also saves its ``(K,)`` channel weights beside the map.
        """
        overlay_path = self.out / source.relative.parent / f"{source.relative.name}_{method.replace('+', 'p')}.png"
        saved = {"npy": "_map.npy", "png16": "_map.png"}.get(self.job.save_maps or "")
        sidecar = self.job.save_maps == "npy" and self.explainers[method].weighs_channels
        return (
            [overlay_path]
            + ([overlay_path.with_name(overlay_path.stem + saved)] if saved else [])
            + ([overlay_path.with_name(overlay_path.stem + CHANNEL_WEIGHTS_SUFFIX)] if sidecar else [])
        )


@dataclass
class Tally:
    """Counts for the closing line; ``failed`` holds inputs, so a file failing for two methods counts once."""

    written: int = 0
    skipped: int = 0
    failed: set[str] = field(default_factory=set)
    lock: Lock = field(default_factory=Lock)


def run(job: OverlayJob) -> int:
    """Explain every input; under torchrun each rank takes its share and rank 0 merges the manifest."""
    return distributed.run_on_ranks(_run, job)


def _run(job: OverlayJob, ranks: distributed.Ranks) -> int:
    checked = plan(job, ranks)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(checked.threads.torch_threads)
    try:
        return _run_planned(checked, job, ranks)
    finally:
        torch.set_num_threads(previous_threads)


def _run_planned(checked: Plan, job: OverlayJob, ranks: distributed.Ranks) -> int:
    _prepare_output(checked.out, ranks)
    manifest = Manifest(checked.out, ranks)
    tally = Tally()
    report_path: Path | None = None
    try:
        todo = _todo(checked, ranks, manifest, tally)
        _explain_images(checked, [source for source in todo if not is_volume(source.path)], manifest, tally)
        _explain_volumes(checked, [source for source in todo if is_volume(source.path)], manifest, tally)
    finally:
        manifest.finish()
        # After the merge, so the page shows every rank's rows; also after failures and on Ctrl-C
        # (building it from the manifest is cheap: about 0.6 s for 10,000 images x 2 methods).
        if job.report and ranks.is_main:
            report_path = _write_report(checked, manifest)
    failed = int(distributed.total(len(tally.failed), ranks))
    written = int(distributed.total(tally.written, ranks))
    skipped = int(distributed.total(tally.skipped, ranks))
    if not job.quiet and ranks.is_main:
        shown = f"; report: {report_path}" if report_path else ""
        print(
            f"camkit: {written} overlays written, {skipped} skipped as already done, {failed} inputs failed; "
            f"manifest: {manifest.path}{shown}",
            file=sys.stderr,
        )
    manifest_lost = manifest.write_error is not None  # said in one line when it happened
    return 1 if failed or manifest_lost or (job.report and ranks.is_main and report_path is None) else 0


def _write_report(checked: Plan, manifest: Manifest) -> Path | None:
    """The report of every row in the manifest; a report that cannot be written is one stderr line, not a crash."""
    try:
        return report.write_report(
            manifest.path, label_from_folder=checked.job.label_from_folder, class_names=checked.loaded.class_names
        )
    except OSError as error:
        print(f"camkit: cannot write {checked.out / report.REPORT_NAME}: {error.strerror or error}", file=sys.stderr)
        return None


def plan(job: OverlayJob, ranks: distributed.Ranks | None = None) -> Plan:
    """Check everything that can be checked before the model runs; raise one CamkitError for the first problem."""
    ranks = ranks or distributed.Ranks()
    methods = (
        list(METHODS)
        if job.method == "all"
        else [name.strip().lower() for name in job.method.split(",") if name.strip()]
    )
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise CamkitError(
            f"unknown method {', '.join(unknown) or repr(job.method)}; choose from {', '.join(METHODS)} or 'all'"
        )
    if not 0.0 <= job.alpha <= 1.0:
        raise CamkitError(f"--alpha must lie in [0, 1], got {job.alpha}")
    if job.batch_size < 1:
        raise CamkitError(f"--batch-size must be at least 1, got {job.batch_size}")
    if job.label_from_folder and not job.report:
        raise CamkitError("--label-from-folder labels the rows of the report: add --report")
    if job.workers is not None and job.workers < 0:
        raise CamkitError(f"--workers must be 0 (decode in this process) or more, got {job.workers}")
    if job.threads is not None and job.threads < 1:
        raise CamkitError(f"--threads must be at least 1, got {job.threads}")
    if job.samples is not None and job.samples < 1:
        raise CamkitError(f"--samples must be at least 1, got {job.samples}")
    if not 0.0 <= job.score_threshold < 1.0:
        raise CamkitError(f"--score-threshold must lie in [0, 1), got {job.score_threshold}")
    if job.max_detections < 1:
        raise CamkitError(f"--max-detections must be at least 1, got {job.max_detections}")
    # Under torchrun the ranks on this machine share its cores.
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = thread_budget(usable_cores() // ranks_here, workers=job.workers, threads=job.threads)
    if job.input_size is not None and job.input_size < MIN_INPUT_SIZE:
        raise CamkitError(
            f"--input-size must be at least {MIN_INPUT_SIZE} pixels, got {job.input_size}; "
            "leave it out to use the model's own input size"
        )
    colormap_lut(job.colormap)
    mean, std = _normalisation(job.normalize)
    device = resolve_device(distributed.device_for(ranks, job.device))
    loaded = load_model(job.model, job.weights, device)
    if job.class_names is not None:
        loaded.class_names = read_class_names(job.class_names)
    mean, std = (mean, std) if job.normalize is not None else (loaded.mean, loaded.std)
    size = (job.input_size, job.input_size) if job.input_size else loaded.input_size
    target = None if job.target == "top1" else _class_index(job.target, loaded)
    if job.method == "all":  # the attention methods need a transformer
        methods = methods_for(loaded.model)
    explainers = {name: create(name, loaded.model, job.layer, **_sample_options(name, job.samples)) for name in methods}
    _preflight(loaded, explainers, size, device)
    if target is not None:
        check_target_in_range(loaded, target, size, device)

    out = Path(job.output).resolve()
    _check_output_is_not_an_input(out, job.inputs)
    sources = discover(job.inputs, skip=out)
    if not sources:
        suffixes = ", ".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
        raise CamkitError(f"no images found in {', '.join(job.inputs)} (looked for {suffixes}, npy, nii, nii.gz)")
    check_owned(out / "manifest.csv")
    if job.report:
        report.check_owned(out / report.REPORT_NAME)
    return Plan(job, out, loaded, explainers, size, mean, std, target, sources, threads)


def _sample_options(method: str, samples: int | None) -> dict[str, int]:
    """``n_samples=samples`` for a method that draws samples (``--samples``); nothing for the others.

    A method whose cost is set by another count names it in ``samples_option`` (SESS: ``num_scales``).
    """
    cls = METHODS[method]
    option = getattr(cls, "samples_option", "n_samples")
    if samples is None or option not in inspect.signature(cls.__init__).parameters:
        return {}
    return {option: samples}


def _preflight(
    loaded: LoadedModel, explainers: dict[str, Explainer], size: tuple[int, ...], device: torch.device
) -> None:
    """One dry-run forward on a blank input: the model accepts the images and every named layer runs."""
    channels = 3 if len(size) == 2 else (input_channels(loaded.model) or 1)
    blank = torch.zeros(1, channels, *size, device=device)
    try:
        seen = {info.name: info for info in dry_run(loaded.model, blank)}
    except Exception as error:
        if not _input_failure(error):
            raise
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CamkitError(
            f"the model cannot run on a {channels}-channel {'x'.join(map(str, size))} input ({first}); "
            "camkit feeds RGB images: give a model for 3-channel input, or fix --input-size"
        ) from None
    for explainer in explainers.values():
        for name, _ in explainer.layers:
            info = seen.get(name)
            if info is None:
                raise CamkitError(
                    f"--layer {name} does not run when the model sees an image; choose a layer on "
                    "the path from the input to the output (`camkit layers MODEL` lists them)"
                )
            grid = (info.shape or ())[2:] if info.layout is not None and info.layout.value != "nhwc" else ()
            if grid and math.prod(grid) == 1:
                logger.warning(
                    "--layer %s gives a 1x1 map at this input size, so every map will be blank; "
                    "choose an earlier layer or a larger --input-size",
                    name,
                )


def check_target_in_range(loaded: LoadedModel, target: int, size: tuple[int, ...], device: torch.device) -> None:
    """``--target N`` against the model's class count, from one forward on a blank input, before anything is written."""
    channels = 3 if len(size) == 2 else (input_channels(loaded.model) or 1)
    with evaluation(loaded.model), torch.no_grad():
        try:
            logits = logits_of(loaded.model(torch.zeros(1, channels, *size, device=device)))
        except CamkitError:
            return  # an output without class scores: the target callable's business, checked per batch
    classes = int(logits.shape[1]) if logits.dim() >= 2 else 0
    if classes and not 0 <= target < classes:
        named = f" ({len(loaded.class_names)} class names)" if loaded.class_names else ""
        raise CamkitError(
            f"--target {target} is out of range: the model has {classes} classes{named}, so a class "
            f"index is 0..{classes - 1}"
        )


def _check_output_is_not_an_input(out: Path, inputs: list[str]) -> None:
    for entry in inputs:
        path = Path(entry)
        if path.is_dir() and (out == path.resolve() or out in path.resolve().parents):
            raise CamkitError(
                f"the output folder {out} is the input folder {entry} or contains it, so outputs "
                "could be read back or overwrite inputs; give -o a folder of its own "
                "(one inside the input folder is fine: it is never read as input)"
            )


def _prepare_output(out: Path, ranks: distributed.Ranks) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Named per process too: two runs into one folder at once each probe and remove their own file.
        probe = out / f".camkit-write-test-{os.getpid()}-{ranks.rank}"
        write_atomically(probe, b"")
        probe.unlink()
    except OSError as error:
        raise CamkitError(f"cannot write to output folder {out}: {error.strerror or error}") from None


def _todo(checked: Plan, ranks: distributed.Ranks, manifest: Manifest, tally: Tally) -> list[Source]:
    """This rank's inputs that still miss an output; the others are recorded as skipped."""
    todo = []
    for source in distributed.shard(checked.sources, ranks):
        if source.unreadable is not None:
            _fail(source, checked, manifest, tally, source.unreadable)
            continue
        expected = {method: checked.outputs(source, method) for method in checked.explainers}
        for paths in expected.values():
            for path in paths:
                remove_stale_parts(path)
        if checked.detector:
            done = all(_detections_done(checked, manifest, source, method) for method in expected)
        else:
            done = all(path.exists() for paths in expected.values() for path in paths)
        if not checked.job.overwrite and done:
            for method, paths in expected.items():
                manifest.add(_row(source, paths[0], method, status=SKIPPED))
            tally.skipped += len(expected)
        else:
            todo.append(source)
    return todo


@dataclass
class Item:
    index: int
    pixels: torch.Tensor | None  # (3, S, S) float, normalised
    original: torch.Tensor | None  # (3, H, W) uint8
    error: str | None

    def read_pixels(self) -> torch.Tensor:
        """``pixels`` of an image that was read (``error`` is None)."""
        if self.pixels is None:
            raise CamkitError(f"image {self.index} was not read: {self.error}")
        return self.pixels


class Images(torch.utils.data.Dataset):
    """Decodes and resizes in the workers; a bad file becomes an error record, never an exception."""

    def __init__(
        self, sources: list[Source], size: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.sources, self.size = sources, size
        self.mean = torch.tensor(mean).reshape(3, 1, 1)
        self.std = torch.tensor(std).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Item:
        try:
            original = read_rgb(self.sources[index].path)
        except Exception as error:
            return Item(index, None, None, f"cannot read image: {_one_line(error)}")
        return Item(index, (resized_to(original, self.size) - self.mean) / self.std, original, None)


def resized_to(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``(3, H, W)`` to float ``(3, *size)`` in [0, 1], antialiased; an image already at ``size`` is not resampled
    (bilinear at scale 1 is the identity, and skipping it saves a pass per image)."""
    scaled = image.float() / 255
    if tuple(image.shape[1:]) == tuple(size):
        return scaled
    return F.interpolate(scaled[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _lower_priority() -> None:
    """Writer threads yield the cores to the model's threads (Linux: a thread has its own nice value).

    torch's intra-op threads wait for each other at every operation, so a writer that
    preempts one of them stalls them all; niced, the writers run in the gaps instead. They
    cannot starve: when the pending writes fill their slots, the main loop waits for them.
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: equal priority, still correct
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + WRITER_NICENESS))


class Writers:
    """The writer threads: blending, encoding and writing, each finished file's row straight into the manifest."""

    def __init__(self, manifest: Manifest, tally: Tally, pending: int, threads: int = 2) -> None:
        self.manifest, self.tally = manifest, tally
        self.slots = BoundedSemaphore(pending)  # bounds the images waiting to be written
        self.pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="camkit-writer", initializer=_lower_priority
        )

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.pool.shutdown(wait=True)  # also on Ctrl-C: what is being written finishes and is recorded

    def submit(self, row: dict[str, Any], write: Any, *args: Any) -> None:
        self.slots.acquire()
        future = self.pool.submit(write, *args)
        future.add_done_callback(lambda done: self._finished(done, row))

    def _finished(self, future: Future, row: dict[str, Any]) -> None:
        try:
            error = future.exception()
            if error is None:
                with self.tally.lock:
                    self.tally.written += 1
            else:
                row = {**row, "status": "error", "error": f"cannot write output: {_one_line(error)}"}
                print(f"camkit: {row['output']}: {row['error']}", file=sys.stderr)
                with self.tally.lock:
                    self.tally.failed.add(row["input"])
            self.manifest.add(row)
        finally:
            self.slots.release()


def _explain_images(checked: Plan, sources: list[Source], manifest: Manifest, tally: Tally) -> None:
    if not sources:
        return
    if len(checked.size) != 2:
        for source in sources:
            _fail(source, checked, manifest, tally, "a 2-D image, but the model takes 3-D volumes")
        return
    if checked.detector:
        _explain_detections(checked, sources, manifest, tally)
        return
    loader = torch.utils.data.DataLoader(
        Images(sources, checked.size, checked.mean, checked.std),
        batch_size=checked.job.batch_size,
        num_workers=checked.threads.workers,
        collate_fn=list,
        worker_init_fn=_quiet_worker,
        persistent_workers=False,
    )
    policy = TargetPolicy(checked.loaded.model, checked.target)
    device = _device_of(checked.loaded.model)
    with (
        progress_bar(len(sources), "camkit overlay", checked.job.quiet) as bar,
        Writers(manifest, tally, 4 * checked.job.batch_size, checked.threads.writers) as writers,
    ):
        within = WithinBatch(bar, checked.explainers)
        for batch in loader:
            within.start(len(batch))
            for item in batch:
                if item.error is not None:
                    _fail(sources[item.index], checked, manifest, tally, item.error)
            good = [item for item in batch if item.error is None]
            for items, target, results in _explained(checked, policy, good, device, sources, manifest, tally, within):
                for method, result in results.items():
                    maps = result.maps.cpu()
                    attributions = result.attributions.cpu() if result.attributions is not None else None
                    for row_index, item in enumerate(items):
                        source = sources[item.index]
                        paths = checked.outputs(source, method)
                        row = _row(
                            source,
                            paths[0],
                            method,
                            status="ok",
                            result=result,
                            row_index=row_index,
                            loaded=checked.loaded,
                            explained=_explained_class(target, row_index),
                        )
                        if attributions is not None:
                            writers.submit(
                                row,
                                _write_attribution,
                                item.original,
                                maps[row_index],
                                attributions[row_index],
                                paths,
                                checked.job,
                            )
                        else:
                            weights = (
                                result.channel_weights[row_index].cpu() if result.channel_weights is not None else None
                            )
                            writers.submit(
                                row,
                                _write_image,
                                item.original,
                                maps[row_index],
                                paths,
                                checked.job,
                                weights,
                                caption_text(row, checked.loaded.class_names),
                            )
            within.finish()


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int, description: str, quiet: bool) -> tqdm:
    """Images done, images/s and ETA on stderr, only on a terminal and without ``--quiet``; fractions within a batch."""
    return tqdm(
        total=total,
        unit="img",
        desc=description,
        file=sys.stderr,
        disable=quiet or not stderr_is_terminal(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} img [{elapsed}<{remaining}, {rate_fmt}]",
        **progress.sizing(sys.stderr),  # a terminal that reports no width still gets a visible bar
    )


class WithinBatch:
    """Moves the bar inside a batch: each method's share as it finishes, perturbation methods chunk by chunk.

    A batch of ``b`` images and ``M`` methods moves the bar ``b / M`` per
    method; a perturbation method reports its masked copies as they run. So an
    8-image run that is one batch still shows progress, rate and ETA.
    """

    def __init__(self, bar: tqdm, explainers: dict[str, Explainer]) -> None:
        self.bar, self.explainers = bar, explainers
        self.start_at, self.images, self.method = 0.0, 0, 0
        for explainer in explainers.values():
            if hasattr(explainer, "progress") and explainer.progress is None:
                explainer.progress = self._copies_done

    def start(self, images: int) -> None:
        self.start_at, self.images, self.method = float(self.bar.n), images, 0

    def method_started(self, index: int) -> None:
        self.method = index
        self._move_to(index / len(self.explainers))

    def _copies_done(self, done: int, total: int) -> None:
        self._move_to((self.method + done / max(1, total)) / len(self.explainers))

    def finish(self) -> None:
        self._move_to(1.0)

    def _move_to(self, fraction: float) -> None:
        position = self.start_at + self.images * min(1.0, fraction)
        if position > self.bar.n:  # never backwards (a batch retried image by image restarts its methods)
            self.bar.update(position - self.bar.n)


def _explained(
    checked: Plan,
    policy: TargetPolicy,
    items: list[Item],
    device: torch.device,
    sources: list[Source],
    manifest: Manifest,
    tally: Tally,
    within: WithinBatch | None = None,
) -> Iterator[tuple[list[Item], Any, dict[str, Explanation]]]:
    """The batch explained by every method; if that fails, image by image, so one bad image loses only itself."""
    if not items:
        return
    try:
        x = torch.stack([item.read_pixels() for item in items]).to(device)
        target = policy(x)
        results = {}
        for index, (method, explainer) in enumerate(checked.explainers.items()):
            if within is not None:
                within.method_started(index)
            results[method] = explainer.explain(x, target)
        yield items, target, results
        return
    except Exception as error:
        if not _input_failure(error):
            raise
        if len(items) == 1:
            _fail(sources[items[0].index], checked, manifest, tally, f"cannot explain: {_one_line(error)}")
            return
    for item in items:
        yield from _explained(checked, policy, [item], device, sources, manifest, tally)


def _write_image(
    original: torch.Tensor,
    image_map: torch.Tensor,
    paths: list[Path],
    job: OverlayJob,
    channel_weights: torch.Tensor | None = None,
    caption: str = "",
) -> None:
    height, width = original.shape[1:]
    full = (
        image_map[None]
        if tuple(image_map.shape) == (height, width)
        else F.interpolate(image_map[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
    )
    blended = to_uint8_hwc(overlay(original[None].float() / 255, full, alpha=job.alpha, colormap=job.colormap))[0]
    picture = captioned(blended, caption, job.colormap) if job.caption and caption else blended
    write_atomically(paths[0], encode_png(picture.numpy()))
    _write_map(full[0], paths, job, channel_weights)


def caption_text(row: dict[str, Any], class_names: list[str] | None) -> str:
    """The caption strip's text: the method, the explained class, and the prediction with its probability."""

    def named(index: Any) -> str:
        if index == "" or index is None:
            return ""
        name = class_names[int(index)] if class_names and 0 <= int(index) < len(class_names) else ""
        return f"{index} {name}" if name and name != str(index) else str(index)

    explained, predicted = named(row.get("explained_class")), named(row.get("predicted_class"))
    probability = f" ({float(row['score']):.0%})" if row.get("score") not in ("", None) else ""
    parts = [str(row["method"])]
    if explained:
        parts.append(f"explains {explained}" + (probability if explained == predicted else ""))
    if predicted and explained != predicted:
        parts.append(f"predicted {predicted}{probability}")
    return " | ".join(parts)


def _write_attribution(
    original: torch.Tensor, image_map: torch.Tensor, attribution: torch.Tensor, paths: list[Path], job: OverlayJob
) -> None:
    """A pixel method's output: the signed attribution as a picture (not a heatmap), at the image's size;
    ``--save-maps npy`` keeps the raw ``(C, H, W)`` attributions at the model's input size."""
    height, width = original.shape[1:]
    picture = F.interpolate(
        attribution_picture(attribution[None]), size=(height, width), mode="bilinear", align_corners=False
    )
    write_atomically(paths[0], encode_png(to_uint8_hwc(picture)[0].numpy()))
    if job.save_maps == "npy":
        write_atomically(paths[1], encode_npy(attribution.numpy()))
    else:
        full = F.interpolate(image_map[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
        _write_map(full[0], paths, job)


def _write_map(
    full: torch.Tensor, paths: list[Path], job: OverlayJob, channel_weights: torch.Tensor | None = None
) -> None:
    if job.save_maps == "npy":
        write_atomically(paths[1], encode_npy(full.numpy()))
        if channel_weights is not None and len(paths) > 2:  # the sidecar: (K,) float32 weights of the layer's channels
            write_atomically(paths[2], encode_npy(channel_weights.float().numpy()))
    elif job.save_maps == "png16":
        write_atomically(paths[1], encode_png((full * 65535).round().clamp(0, 65535).numpy().astype("uint16")))


def _explain_volumes(checked: Plan, sources: list[Source], manifest: Manifest, tally: Tally) -> None:
    """3-D volumes one at a time, each explained at the model's input size and drawn as a montage."""
    device = _device_of(checked.loaded.model)
    channels = input_channels(checked.loaded.model)
    policy = TargetPolicy(checked.loaded.model, checked.target)
    for source in sources:
        if len(checked.loaded.input_size) != 3:
            _fail(
                source,
                checked,
                manifest,
                tally,
                "a 3-D volume, but the model takes 2-D images; give a 3-D model with --model",
            )
            continue
        try:
            volume = read_volume(source.path)
        except Exception as error:
            _fail(source, checked, manifest, tally, f"cannot read volume: {_one_line(error)}")
            continue
        try:
            x = volumes.prepared(volume, channels, checked.loaded.input_size).to(device)
            target = policy(x)
            results = {method: explainer.explain(x, target) for method, explainer in checked.explainers.items()}
        except Exception as error:
            if not _input_failure(error):
                raise
            _fail(source, checked, manifest, tally, f"cannot explain: {_one_line(error)}")
            continue
        for method, result in results.items():
            full = F.interpolate(
                result.maps[:, None].cpu(), size=tuple(volume.shape[1:]), mode="trilinear", align_corners=False
            )[0, 0]
            paths = checked.outputs(source, method)
            row = _row(
                source,
                paths[0],
                method,
                status="ok",
                result=result,
                loaded=checked.loaded,
                explained=_explained_class(target, 0),
            )
            picture = to_uint8_hwc(volumes.montage(volume[0], full, checked.job.alpha, checked.job.colormap))[0]
            if checked.job.caption:  # the same strip as a 2-D overlay's: the montage alone says what it shows
                picture = captioned(picture, caption_text(row, checked.loaded.class_names), checked.job.colormap)
            write_atomically(paths[0], encode_png(picture.numpy()))
            if checked.job.save_maps == "npy":
                _write_map(
                    full,
                    paths,
                    checked.job,
                    result.channel_weights[0].cpu() if result.channel_weights is not None else None,
                )
            manifest.add(row)
            tally.written += 1


# Detectors: one overlay per image with every box over its combined map (and with --per-detection one
# file per detection), and one manifest row per detection with its box (in the image's pixels), label,
# label name and score; an image without detections has one row that says so.


def _explain_detections(checked: Plan, sources: list[Source], manifest: Manifest, tally: Tally) -> None:
    job, device = checked.job, _device_of(checked.loaded.model)
    loader = torch.utils.data.DataLoader(
        Images(sources, checked.size, checked.mean, checked.std),
        batch_size=job.batch_size,
        num_workers=checked.threads.workers,
        collate_fn=list,
        worker_init_fn=_quiet_worker,
        persistent_workers=False,
    )
    with progress_bar(len(sources), "camkit overlay", job.quiet) as bar:
        for batch in loader:
            for item in batch:
                bar.update(1)
                if item.error is not None:
                    _fail(sources[item.index], checked, manifest, tally, item.error)
                    continue
                source = sources[item.index]
                for method, explainer in checked.explainers.items():
                    try:
                        result = explainer.explain_detections(
                            item.pixels[None].to(device),
                            score_threshold=job.score_threshold,
                            max_detections=job.max_detections,
                            score=job.detection_score,
                        )
                    except EXPLAIN_ERRORS as error:
                        _fail(source, checked, manifest, tally, f"cannot explain: {_one_line(error)}")
                        break
                    for row in _write_detections(result, item.original, source, method, checked):
                        manifest.add(row)
                    tally.written += 1


def _write_detections(
    result: Any, original: torch.Tensor, source: Source, method: str, checked: Plan
) -> list[dict[str, Any]]:
    """The image's overlay (and one per detection), at the image's own size; its manifest rows.

    The overlay is written last: a resumed run takes an image whose overlay exists as drawn in full.
    """
    path = checked.outputs(source, method)[0]
    height, width = original.shape[1:]
    scale = torch.tensor([width / checked.size[1], height / checked.size[0]] * 2)
    display = original[None].float() / 255
    found = result.maps[0].cpu()
    # An image without detections has no maps to resize (interpolate refuses zero channels).
    maps = [
        F.interpolate(found[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if found.shape[0]
        else found.new_zeros(0, height, width)
    ]
    boxes = result.boxes[0].cpu() * scale
    resized = type(result)(
        **{
            **result.__dict__,
            "images": display,
            "display": display,
            "maps": maps,
            "boxes": [boxes],
            "class_names": checked.loaded.class_names,
        }
    )
    alpha, colormap = checked.job.alpha, checked.job.colormap
    singles = (
        detection_overlays(resized, per_detection=True, alpha=alpha, colormap=colormap)[0]
        if checked.job.per_detection
        else None
    )
    rows = []
    for index in range(boxes.shape[0]):
        output = detection_output(path, index) if singles is not None else path
        if singles is not None:
            write_atomically(output, encode_png(singles[index].permute(1, 2, 0).numpy()))
        label = int(result.labels[0][index])
        row = _row(source, output, method, status="ok")
        row.update(
            predicted_class=label,
            predicted_name=resized.class_name(label),
            score=f"{float(result.scores[0][index]):.6f}",
            explained_class=label,
            detection=index,
            overlay=str(path),
            **dict(zip(("x0", "y0", "x1", "y1"), (f"{value:.1f}" for value in boxes[index].tolist()))),
        )
        rows.append(row)
    write_atomically(
        path, encode_png(detection_overlays(resized, alpha=alpha, colormap=colormap)[0].permute(1, 2, 0).numpy())
    )
    # An image without detections still has its row: it was explained, and found nothing above the threshold.
    return rows or [{**_row(source, path, method, status="ok"), "overlay": str(path)}]


def detection_output(overlay_path: Path, index: int) -> Path:
    """With ``--per-detection``: the file of the image's ``index``-th detection, beside its overlay."""
    return overlay_path.with_name(f"{overlay_path.stem}_det{index:02d}.png")


def _detections_done(checked: Plan, manifest: Manifest, source: Source, method: str) -> bool:
    """Whether an earlier run explained this image's detections: its overlay exists and the manifest holds its
    rows, every one ok and with its file (one per detection if ``--per-detection`` asks for them)."""
    overlay_path = checked.outputs(source, method)[0]
    if not overlay_path.exists():
        return False
    recorded = manifest.earlier.get((os.path.relpath(os.path.abspath(source.path), checked.out), method))
    if not recorded:
        return False
    for row in recorded.values():
        if row["status"] != "ok" or not (checked.out / str(row["output"])).exists():
            return False
        detection = str(row.get("detection") or "")
        if not str(row.get("overlay") or ""):
            return False  # a row of an earlier version (best detection only): explain again
        if (
            checked.job.per_detection
            and detection
            and Path(row["output"]).name != detection_output(overlay_path, int(detection)).name
        ):
            return False
    return True


def _fail(source: Source, checked: Plan, manifest: Manifest, tally: Tally, message: str) -> None:
    print(f"camkit: {source.path}: {message}", file=sys.stderr)
    with tally.lock:
        tally.failed.add(str(source.path))
    for method in checked.explainers:
        manifest.add(_row(source, "", method, status="error", error=message))


def _row(
    source: Source,
    path: Path | str,
    method: str,
    *,
    status: str,
    error: str = "",
    result: Explanation | None = None,
    row_index: int = 0,
    loaded: LoadedModel | None = None,
    explained: int | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "input": str(source.path),
        "output": str(path),
        "method": method,
        "predicted_class": "",
        "predicted_name": "",
        "score": "",
        "explained_class": "",
        "status": status,
        "error": error,
    }
    if result is not None:
        if result.predictions is not None and result.probabilities is not None:  # set together
            predicted = int(result.predictions[row_index])
            row["predicted_class"] = predicted
            names = loaded.class_names if loaded is not None else None
            row["predicted_name"] = names[predicted] if names and predicted < len(names) else ""
            row["score"] = f"{float(result.probabilities[row_index]):.6f}"
        if result.targets is not None:
            row["explained_class"] = int(result.targets[row_index])
        elif explained is not None:
            row["explained_class"] = explained
    return row


class TargetPolicy:
    """The CLI's ``--target`` per batch: a class for classifiers, a SegmentationTarget for segmenters.

    Whether the model is a segmenter is learnt from one forward pass on the
    first batch. A segmenter's "top1" is, per image, the non-background class
    (class 0 is background) that the model assigns the most pixels to.
    """

    def __init__(self, model: torch.nn.Module, target: int | None) -> None:
        self.model, self.target = model, target
        self.dense: bool | None = None

    def __call__(self, x: torch.Tensor) -> Any:
        if self.dense is False:
            return self.target
        if self.dense and self.target is not None:
            return SegmentationTarget(self.target)
        with evaluation(self.model), torch.no_grad():
            with model_code():
                output = self.model(x)
            logits = logits_of(output)
        self.dense = logits.dim() >= 4
        if not self.dense:
            return self.target
        if self.target is not None:
            return SegmentationTarget(self.target)
        areas = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).flatten(1, -2).sum(1)
        if logits.shape[1] > 1:
            areas[:, 0] = -1
        return SegmentationTarget(areas.argmax(1))


def _explained_class(target: Any, row_index: int) -> int | None:
    if isinstance(target, SegmentationTarget):
        category = target.category
        if isinstance(category, int):
            return category
        return int(category[row_index]) if not isinstance(category, torch.Tensor) or category.dim() else int(category)
    return None


def _normalisation(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if spec is None or spec in NORMALISATIONS:
        return NORMALISATIONS[spec or "imagenet"]
    try:
        mean_text, std_text = spec.split(":")
        mean = tuple(float(value) for value in mean_text.split(","))
        std = tuple(float(value) for value in std_text.split(","))
    except ValueError:
        raise CamkitError(f"--normalize {spec!r}: use imagenet, none, or m1,m2,m3:s1,s2,s3") from None
    if len(mean) != 3 or len(std) != 3:
        raise CamkitError(f"--normalize {spec!r}: give three means and three stds, m1,m2,m3:s1,s2,s3")
    if not all(math.isfinite(value) for value in mean + std) or min(std) <= 0:
        raise CamkitError(f"--normalize {spec!r}: means must be finite and stds finite and positive")
    return mean, std


def _class_index(text: str, loaded: LoadedModel) -> int:
    try:
        return int(text)
    except ValueError:
        names = loaded.class_names or []
        if text in names:
            return names.index(text)
        if not names:
            raise CamkitError(
                f"--target {text!r} is a class name, but this model has no class names (a local "
                "checkpoint carries none): pass --class-names FILE (one name per line, or JSON), "
                "or give a class index"
            ) from None
        raise CamkitError(f"--target {text!r}: use top1, a class index, or a class name of this model") from None


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _quiet_worker(_worker: int) -> None:
    # Decoding workers share the machine with the model: one thread each. Ctrl-C is the main
    # process's to handle; a worker that also caught it would print its own traceback.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _input_failure(error: Exception) -> bool:
    """Whether ``error`` is one input's failure (reported in its row) rather than a bug in camkit."""
    return isinstance(error, EXPLAIN_ERRORS) or raised_by_model(error)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
