"""The scoring behind ``camkit evaluate``: every method by every metric, as a table.

On the bundled demo set (held-out digits on photos, with the digits' boxes)
by default, or on a folder of images (then the localisation columns, which
need ground truth, stay empty).
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
from ..explainers import METHODS, create
from . import distributed
from .io import discover, read_rgb, write_atomically
from .models import load_model, resolve_device
from .runner import progress_bar

COLUMNS = ("method", "pointing_game", "energy_pointing_game", "deletion", "insertion", "average_drop",
           "increase_in_confidence", "class_sensitivity", "model_randomisation", "seconds_per_image")


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
    quiet: bool = False


def run(args: EvaluationJob) -> int:
    """Under torchrun each rank scores its share of the images; sums are reduced across ranks."""
    return distributed.run_on_ranks(_run, args)


def _run(args: EvaluationJob, ranks: distributed.Ranks) -> int:
    for flag, value in (("--n-images", args.n_images), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise CamkitError(f"{flag} must be at least 1, got {value}")
    names = list(METHODS) if args.methods == "all" else [name.strip() for name in args.methods.split(",")]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise CamkitError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)} or 'all'")
    device = resolve_device(distributed.device_for(ranks, args.device))
    loaded = load_model(args.model, args.weights, device)
    x, masks = _data(args, loaded)
    share = distributed.shard(list(range(x.shape[0])), ranks)
    x = x[share].to(device)
    masks = masks[share].to(device) if masks is not None else None
    with progress_bar(len(names) * x.shape[0], "camkit evaluate", args.quiet or not ranks.is_main) as bar:
        table = [_score(name, create(name, loaded.model, args.layer), loaded.model, x, masks, args, ranks, bar)
                 for name in names]
    if not ranks.is_main:
        return 0
    print(_markdown(table))
    if args.csv is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
        write_atomically(args.csv, buffer.getvalue().encode())
    return 0


def _data(args: EvaluationJob, loaded) -> tuple[torch.Tensor, torch.Tensor | None]:
    mean = torch.tensor(loaded.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(loaded.std).reshape(1, 3, 1, 1)
    if not args.inputs:
        if args.model not in (None, "demo"):
            raise CamkitError("the demo set needs the demo model: give INPUT images for another --model")
        from .demo import demo_object_masks, make_demo_dataset

        images, _, boxes = make_demo_dataset(args.n_images, seed=1, split="test")
        return (images.float() / 255 - mean) / std, demo_object_masks(boxes, images.shape[-1])
    pixels = []
    for source in discover(args.inputs):
        try:
            image = read_rgb(source.path)
        except Exception as error:  # noqa: BLE001 - a bad file is reported and skipped
            print(f"camkit: {source.path}: cannot read image: {error}", file=sys.stderr)
            continue
        pixels.append(F.interpolate(image[None].float() / 255, size=loaded.input_size, mode="bilinear",
                                    antialias=True, align_corners=False)[0])
    if not pixels:
        raise CamkitError(f"no readable images in {', '.join(args.inputs)}")
    return (torch.stack(pixels) - mean) / std, None


def _score(name: str, explainer, model, x: torch.Tensor, masks, args, ranks: distributed.Ranks,
           bar: tqdm) -> dict[str, Any]:
    sums: dict[str, float] = {column: 0.0 for column in COLUMNS[1:]}
    seconds = 0.0
    for start in range(0, x.shape[0], args.batch_size):
        batch = x[start : start + args.batch_size]
        with torch.no_grad():
            top_two = model(batch).topk(2, dim=1).indices
        began = time.perf_counter()
        maps = explainer(batch, top_two[:, 0])
        if maps.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - began
        values = {
            "deletion": metrics.deletion(model, batch, maps, top_two[:, 0], steps=args.steps, baseline="zero"),
            "insertion": metrics.insertion(model, batch, maps, top_two[:, 0], steps=args.steps),
            "average_drop": metrics.average_drop(model, batch, maps, top_two[:, 0]),
            "increase_in_confidence": metrics.increase_in_confidence(model, batch, maps, top_two[:, 0]),
            "class_sensitivity": metrics.pearson(maps, explainer(batch, top_two[:, 1])),
            "model_randomisation": metrics.model_randomisation(
                lambda model_copy: create(name, model_copy, args.layer), model, batch, top_two[:, 0]),
        }
        if masks is not None:
            batch_masks = masks[start : start + args.batch_size]
            values["pointing_game"] = metrics.pointing_game(maps, batch_masks)
            values["energy_pointing_game"] = metrics.energy_pointing_game(maps, batch_masks)
        for key, value in values.items():
            sums[key] += float(value.sum())
        bar.update(batch.shape[0])  # images x methods scored
    count = distributed.total(x.shape[0], ranks)
    sums = {key: distributed.total(value, ranks) for key, value in sums.items()}
    seconds = distributed.total(seconds, ranks)
    row: dict[str, Any] = {"method": name}
    for column in COLUMNS[1:-1]:
        row[column] = "" if masks is None and "pointing" in column else f"{sums[column] / count:.3f}"
    row["seconds_per_image"] = f"{seconds / count:.4f}"
    return row


def _markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[column]) for column in COLUMNS) + " |" for row in table]
    return "\n".join(lines)
