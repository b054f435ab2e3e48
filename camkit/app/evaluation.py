"""The scoring behind ``camkit evaluate``: every method by every metric, as a table.

On the bundled demo set (held-out digits on photos, with the digits' boxes
and classes) by default, or on a folder of images with ``--boxes`` (COCO
JSON, a folder of VOC XML, or CSV) and/or ``--masks`` (a folder of one mask
image per image); without ground truth the localisation columns stay empty.

Localisation follows Choe et al. (CVPR 2020): MaxBoxAccV2 (percent, the mean
over IoU 0.3/0.5/0.7 of the best box accuracy over CAM thresholds) and PxAP
(percent) over the whole set; localisation error is the Grad-CAM paper's
(largest region above 15 % of the map's maximum, IoU < 0.5 or a wrong class;
without classes, GT-known). On the demo set PxAP scores against the digits'
boxes, the only masks it has. Boxes are read with x1/y1 exclusive and scored
with the authors' inclusive pixel counts (x1 - 1). Robustness uses
``--samples`` noisy copies per image, seeded per image (the numbers do not
depend on batching or on the torchrun split).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import metrics
from ..errors import CamkitError
from ..explainers import METHODS, create, methods_for
from . import distributed, report
from .annotations import find_mask, read_boxes, scale_boxes
from .evaluation_store import EvaluationStore, ImageRecord
from .io import discover, read_rgb, write_atomically
from .models import load_model, resolve_device
from .runner import progress_bar

COLUMNS = (
    "method",
    "pointing_game",
    "energy_pointing_game",
    "max_box_acc_v2",
    "localisation_error",
    "pxap",
    "deletion",
    "insertion",
    "average_drop",
    "increase_in_confidence",
    "road_combined",
    "class_sensitivity",
    "model_randomisation",
    "max_sensitivity",
    "gradient_noise_spearman",
    "gradient_noise_ssim",
    "sparseness",
    "complexity",
    "adcc",
    "seconds_per_image",
)
# Columns that need ground truth, and those over the whole set (no per-image spread).
NEEDS_BOXES = ("max_box_acc_v2", "localisation_error")
NEEDS_OBJECTS = ("pointing_game", "energy_pointing_game", "pxap")
ROBUSTNESS = ("max_sensitivity", "gradient_noise_spearman", "gradient_noise_ssim")
DATA_SET_LEVEL = ("max_box_acc_v2", "pxap")
ROAD_PERCENTILES = (20, 40, 60, 80)


@dataclass
class EvaluationJob:
    """What one ``camkit evaluate`` run is asked to do (the CLI's flags, parsed)."""

    inputs: list[str] = field(default_factory=list)
    methods: str = "all"
    model: str | None = None
    weights: str | None = None
    layer: str | None = None
    n_images: int = 64
    batch_size: int = 16
    steps: int = 32
    device: str = "auto"
    csv: Path | None = None
    boxes: Path | None = None
    masks: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None
    samples: int = 2
    sigma: float = 0.1
    quiet: bool = False
    output: Path | None = None
    report: bool = False


@dataclass
class EvaluationData:
    """The images and their ground truth, on the device; ``index`` numbers every image across ranks."""

    x: torch.Tensor
    index: torch.Tensor
    objects: torch.Tensor | None = None  # (N, H, W) bool: masks, or the boxes filled
    boxes: list[torch.Tensor] | None = None  # per image (G, 4), inclusive corners as the authors'
    labels: torch.Tensor | None = None  # (N,) classes, when known (the demo set)
    keys: list[str] = field(default_factory=list)  # what names each image in the resume store

    def take(self, rows: list[int], device: torch.device) -> EvaluationData:
        def part(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows].to(device)

        boxes = None if self.boxes is None else [self.boxes[row].to(device) for row in rows]
        keys = [self.keys[row] for row in rows] if self.keys else []
        x, index = self.x[rows].to(device), self.index[rows].to(device)
        return EvaluationData(x, index, part(self.objects), boxes, part(self.labels), keys)


def run(args: EvaluationJob) -> int:
    """Under torchrun each rank scores its share of the images; sums are reduced across ranks."""
    return distributed.run_on_ranks(_run, args)


def _run(args: EvaluationJob, ranks: distributed.Ranks) -> int:
    for flag, value in (("--n-images", args.n_images), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise CamkitError(f"{flag} must be at least 1, got {value}")
    if args.report and args.output is None:
        raise CamkitError("--report writes OUT/report.html: add --output OUT")
    if args.samples < 0 or args.sigma < 0:
        raise CamkitError(f"--samples and --sigma must be at least 0, got {args.samples} and {args.sigma}")
    names = list(METHODS) if args.methods == "all" else [name.strip() for name in args.methods.split(",")]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise CamkitError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)} or 'all'")
    device = resolve_device(distributed.device_for(ranks, args.device))
    loaded = load_model(args.model, args.weights, device)
    if args.methods == "all":  # the attention methods need a transformer
        names = methods_for(loaded.model)
    data = _data(args, loaded)
    data = data.take(distributed.shard(list(range(data.x.shape[0])), ranks), device)
    store = None
    if args.output is not None:  # (--report without --output was refused before any work)
        if args.output.exists() and not args.output.is_dir():
            raise CamkitError(f"--output {args.output} is a file; give a folder")
        if args.report and ranks.is_main:
            report.check_owned(args.output / report.REPORT_NAME)
        store = EvaluationStore(args.output, _settings(args, device), ranks.rank)
    with progress_bar(len(names) * data.x.shape[0], "camkit evaluate", args.quiet or not ranks.is_main) as bar:
        scored = [
            _score(name, create(name, loaded.model, args.layer), loaded.model, data, args, ranks, bar, store)
            for name in names
        ]
    if not ranks.is_main:
        return 0
    table = [row for row, _, _ in scored]
    print(_markdown(table))
    plot = None
    if args.plot is not None or args.output is not None:
        plot = _plot(table, [spread for _, spread, _ in scored], [curve for _, _, curve in scored])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    targets: list[tuple[Path | None, bytes | None]] = [
        (args.markdown, (_markdown(table) + "\n").encode()),
        (args.csv, buffer.getvalue().encode()),
        (args.plot, plot),
    ]
    if args.output is not None:
        targets += [
            (args.output / report.EVALUATION_TABLE, buffer.getvalue().encode()),
            (args.output / "evaluation.md", (_markdown(table) + "\n").encode()),
            (args.output / report.EVALUATION_PLOT, plot),
        ]
    for path, content in targets:
        if path is not None and content is not None:
            write_atomically(path, content)
    if args.report and args.output is not None:
        shown = report.write_evaluation_report(args.output)
        print(f"camkit evaluate: report: {shown}", file=sys.stderr)
    return 0


def _settings(args: EvaluationJob, device: torch.device) -> dict[str, Any]:
    """Everything that changes a stored number: records are reused only when all of it matches."""

    def stamp(path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return f"{path.resolve()}:{path.stat().st_mtime_ns}"
        except OSError:
            return str(path.resolve())

    return {
        "model": args.model,
        "weights": args.weights,
        "layer": args.layer,
        "steps": args.steps,
        "samples": args.samples,
        "sigma": args.sigma,
        "boxes": stamp(args.boxes),
        "masks": stamp(args.masks),
        "n_images": args.n_images if not args.inputs else None,
        "device": device.type,
    }


def _data(args: EvaluationJob, loaded) -> EvaluationData:
    mean = torch.tensor(loaded.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(loaded.std).reshape(1, 3, 1, 1)
    if not args.inputs:
        if args.model not in (None, "demo"):
            raise CamkitError("the demo set needs the demo model: give INPUT images for another --model")
        if args.boxes is not None or args.masks is not None:
            raise CamkitError("--boxes and --masks annotate INPUT images; give the images too")
        from .demo import demo_object_masks, make_demo_dataset

        images, labels, demo_boxes = make_demo_dataset(args.n_images, seed=1, split="test")
        return EvaluationData(
            (images.float() / 255 - mean) / std,
            torch.arange(images.shape[0]),
            demo_object_masks(demo_boxes, images.shape[-1]),
            list(_inclusive(demo_boxes[:, None].double())),  # one (1, 4) box per image
            labels,
            [f"demo:{index}" for index in range(images.shape[0])],
        )
    annotations = read_boxes(args.boxes) if args.boxes is not None else None
    if args.masks is not None and not args.masks.is_dir():
        raise CamkitError(f"--masks {args.masks}: not a folder; give a folder with one mask image per image")
    pixels, objects, boxes, keys = [], [], [], []
    size = tuple(loaded.input_size)
    for source in discover(args.inputs):
        try:
            image = read_rgb(source.path)
            truth = annotations.for_image(source.path) if annotations is not None else None
            mask_file = find_mask(args.masks, source.path) if args.masks is not None else None
            mask = _read_mask(mask_file, size) if mask_file is not None else None
        except Exception as error:
            print(f"camkit: {source.path}: cannot read image or its annotation: {error}", file=sys.stderr)
            continue
        if (annotations is not None and truth is None) or (args.masks is not None and mask is None):
            print(
                f"camkit: {source.path}: no {'box' if truth is None and annotations else 'mask'} for this "
                "image; left out",
                file=sys.stderr,
            )
            continue
        keys.append(str(Path(source.path).resolve()))
        pixels.append(
            F.interpolate(image[None].float() / 255, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        )
        if truth is not None:
            scaled = scale_boxes(truth, (image.shape[1], image.shape[2]), size)
            boxes.append(_inclusive(scaled.floor()[None])[0])
        if mask is not None:
            objects.append(mask)
        elif truth is not None:
            objects.append(
                metrics.boxes_to_masks(scaled, *size).any(dim=0) if len(scaled) else torch.zeros(size, dtype=torch.bool)
            )
    if not pixels:
        raise CamkitError(f"no readable images in {', '.join(args.inputs)}")
    return EvaluationData(
        (torch.stack(pixels) - mean) / std,
        torch.arange(len(pixels)),
        torch.stack(objects) if objects else None,
        boxes or None,
        keys=keys,
    )


def _inclusive(boxes: torch.Tensor) -> list[torch.Tensor]:
    """(x0, y0, x1, y1) with x1/y1 exclusive to the authors' inclusive corners, one (G, 4) tensor per image."""
    return [torch.cat((row[:, :2], row[:, 2:] - 1), dim=1) for row in boxes]


def _read_mask(path: Path, size: tuple[int, ...]) -> torch.Tensor:
    """A mask image as bool at the model's input size (nearest neighbour; any non-zero pixel is the object)."""
    mask = read_rgb(path).amax(dim=0)[None, None].float()
    return F.interpolate(mask, size=size, mode="nearest")[0, 0] > 0


def _score(
    name: str,
    explainer,
    model,
    data: EvaluationData,
    args,
    ranks: distributed.Ranks,
    bar: tqdm,
    store: EvaluationStore | None = None,
) -> tuple[dict[str, Any], dict[str, float], torch.Tensor | None]:
    """The method's row (means), the per-image spread of each column, and its MaxBoxAcc curve (IoU 0.5).

    Images the store already holds for this method are not scored again; the
    row is built from every image's record, reused or new, the same either way.
    """
    records = store.load(name) if store is not None else {}
    keys = data.keys or [str(int(index)) for index in data.index]
    missing = [row for row, key in enumerate(keys) if key not in records]
    bar.update(data.x.shape[0] - len(missing))
    for start in range(0, len(missing), args.batch_size):
        rows = missing[start : start + args.batch_size]
        fresh = dict(zip([keys[row] for row in rows], _score_batch(name, explainer, model, data, rows, args)))
        records.update(fresh)
        if store is not None:
            store.add(name, fresh)
        bar.update(len(rows))  # images x methods scored
    return _summarise(name, [records[key] for key in keys], data, args, ranks)


def _score_batch(name: str, explainer, model, data: EvaluationData, rows: list[int], args) -> list[ImageRecord]:
    """Every per-image value of the images at ``rows`` under one method, one record per image."""
    batch = data.x[rows]
    with torch.no_grad():
        top_two = model(batch).topk(2, dim=1).indices
    classes = top_two[:, 0]
    began = time.perf_counter()
    maps = explainer(batch, classes)
    if maps.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    values = {
        "deletion": metrics.deletion(model, batch, maps, classes, steps=args.steps, baseline="zero"),
        "insertion": metrics.insertion(model, batch, maps, classes, steps=args.steps),
        "average_drop": metrics.average_drop(model, batch, maps, classes),
        "increase_in_confidence": metrics.increase_in_confidence(model, batch, maps, classes),
        # Imputation noise off: its draws depend on the batch, and the table must not (torchrun, batch size).
        "road_combined": metrics.road_combined(model, batch, maps, classes, percentiles=ROAD_PERCENTILES, noise=0.0),
        "class_sensitivity": metrics.pearson(maps, explainer(batch, top_two[:, 1])),
        "model_randomisation": metrics.model_randomisation(
            lambda model_copy: create(name, model_copy, args.layer), model, batch, classes
        ),
        "sparseness": metrics.sparseness(maps),
        "complexity": metrics.complexity(maps),
        "adcc": metrics.adcc(explainer, batch, classes, maps),
    }
    if args.samples > 0:
        seeds = data.index[rows]
        values["max_sensitivity"] = metrics.max_sensitivity(
            explainer, batch, classes, samples=args.samples, seed=seeds, batch_size=args.batch_size
        )
        stability = metrics.gradient_noise_stability(
            explainer, batch, classes, sigma=args.sigma, samples=args.samples, seed=seeds
        )
        values["gradient_noise_spearman"], values["gradient_noise_ssim"] = stability["spearman"], stability["ssim"]
    histograms: list[torch.Tensor | None] = [None] * len(rows)
    if data.objects is not None:
        objects = data.objects[rows]
        values["pointing_game"] = metrics.pointing_game(maps, objects)
        values["energy_pointing_game"] = metrics.energy_pointing_game(maps, objects)
        histograms = [
            torch.stack(metrics.boxes.pixel_score_histograms(maps[item : item + 1], objects[item : item + 1])).cpu()
            for item in range(len(rows))
        ]
    hits: torch.Tensor | list[None] = [None] * len(rows)
    if data.boxes is not None:
        truth = [data.boxes[row] for row in rows]
        hits = metrics.boxes.box_accuracy_hits(maps, truth).cpu()
        labels = data.labels[rows] if data.labels is not None else None
        hit = metrics.localisation_accuracy(maps, truth, classes if labels is not None else None, labels)
        values["localisation_error"] = 1 - hit
    table = {key: value.double().cpu().tolist() for key, value in values.items()}
    return [
        ImageRecord(
            {key: column[item] for key, column in table.items()},
            None if hits[item] is None else hits[item],
            histograms[item],
            seconds / len(rows),
        )
        for item in range(len(rows))
    ]


def _summarise(
    name: str, records: list[ImageRecord], data: EvaluationData, args, ranks: distributed.Ranks
) -> tuple[dict[str, Any], dict[str, float], torch.Tensor | None]:
    """The method's row from its images' records: means (and spreads) over images, summed across ranks."""
    sums: dict[str, float] = dict.fromkeys(COLUMNS[1:], 0.0)
    squares: dict[str, float] = dict.fromkeys(COLUMNS[1:], 0.0)
    seconds = 0.0
    for record in records:
        for key, value in record.values.items():
            sums[key] += value
            squares[key] += value * value
        seconds += record.seconds
    count = distributed.total(len(records), ranks)
    sums = {key: distributed.total(value, ranks) for key, value in sums.items()}
    squares = {key: distributed.total(value, ranks) for key, value in squares.items()}
    seconds = distributed.total(seconds, ranks)
    row: dict[str, Any] = {"method": name}
    spread: dict[str, float] = {}
    for column in COLUMNS[1:-1]:
        empty = (
            (column in NEEDS_BOXES and data.boxes is None)
            or (column in NEEDS_OBJECTS and data.objects is None)
            or (column in ROBUSTNESS and args.samples == 0)
        )
        if empty or column in DATA_SET_LEVEL:
            row[column] = ""
            continue
        mean = sums[column] / count
        row[column] = f"{mean:.3f}"
        spread[column] = max(squares[column] / count - mean * mean, 0.0) ** 0.5
    curve = None
    if data.boxes is not None:
        boxes_running = metrics.RunningMaxBoxAccuracy()
        hits = [record.box_hits for record in records if record.box_hits is not None]
        local = torch.stack(hits).long().sum(dim=0) if hits else torch.zeros(3, 100, dtype=torch.long)
        boxes_running.counts = distributed.total_tensor(local.to(data.x.device), ranks).cpu()
        boxes_running.images = int(count)
        row["max_box_acc_v2"] = f"{boxes_running.summary()['mean']:.2f}"
        curve = boxes_running.curve()[1].cpu()
    if data.objects is not None:
        parts = [record.pixel_histograms for record in records if record.pixel_histograms is not None]
        bins = metrics.cam_thresholds(0.01).numel() + 2
        local = torch.stack(parts).sum(dim=0) if parts else torch.zeros(2, bins, dtype=torch.float64)
        total = distributed.total_tensor(local.to(data.x.device), ranks).cpu()
        if total[0].sum() > 0:
            pxap_running = metrics.RunningPixelAveragePrecision()
            pxap_running.histograms = (total[0], total[1])
            row["pxap"] = f"{pxap_running.summary():.2f}"
    row["seconds_per_image"] = f"{seconds / count:.4f}"
    return row, spread, curve


def _plot(table: list[dict[str, Any]], spreads: list[dict[str, float]], curves: list[torch.Tensor | None]) -> bytes:
    """A PNG: one panel of bars per metric (mean, error bar one standard deviation over images), and MaxBoxAcc
    at IoU 0.5 against the CAM threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [column for column in COLUMNS[1:-1] if any(row[column] for row in table)]
    panels = len(columns) + (1 if any(curve is not None for curve in curves) else 0)
    width = 4
    height = -(-panels // width)
    figure, axes = plt.subplots(height, width, figsize=(4 * width, 3 * height), squeeze=False)
    names = [row["method"] for row in table]
    for axis, column in zip(axes.flat, columns):
        means = [float(row[column]) if row[column] else 0.0 for row in table]
        errors = [spread.get(column, 0.0) for spread in spreads]
        axis.bar(range(len(names)), means, yerr=errors, capsize=2, color="#4c72b0")
        axis.set_title(column, fontsize=9)
        axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    if panels > len(columns):
        axis = axes.flat[len(columns)]
        for name, curve in zip(names, curves):
            if curve is not None:
                axis.plot(metrics.cam_thresholds(0.01).numpy(), curve.numpy(), label=name, linewidth=1)
        axis.set_title("box accuracy (IoU 0.5) vs CAM threshold", fontsize=9)
        axis.set_xlabel("CAM threshold", fontsize=8)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[panels:]:
        axis.axis("off")
    figure.subplots_adjust(left=0.05, right=0.98, top=0.95, bottom=0.12, hspace=0.9, wspace=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def _markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[column]) for column in COLUMNS) + " |" for row in table]
    return "\n".join(lines)
