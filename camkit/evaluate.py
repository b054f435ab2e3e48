"""``camkit evaluate``: every method scored by every metric, as a table.

On the bundled demo set (held-out digits on photos, with the digits' boxes)
by default, or on a folder of images (then the localisation columns, which
need ground truth, stay empty).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import distributed, metrics
from .explainers import METHODS, create
from .imageio import discover, read_rgb, write_atomically
from .models import load_model

COLUMNS = ("method", "pointing_game", "energy_pointing_game", "deletion", "insertion", "average_drop",
           "increase_in_confidence", "class_sensitivity", "model_randomisation", "seconds_per_image")


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score methods with faithfulness, localisation and sanity metrics",
        description="Print a method x metric table (and write it as CSV). Lower is better for deletion, average "
        "drop, class sensitivity (1 = the map ignores the class) and model randomisation (1 = the map ignores "
        "the weights); higher for the rest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="images/folders/globs (default: the demo set with boxes)")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    parser.add_argument("--model", default=None, help="as for `camkit overlay` (default: the demo CNN)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--layer", default=None)
    parser.add_argument("--n-images", type=int, default=64, help="demo images to evaluate on")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Under torchrun each rank scores its share of the images; sums are reduced across ranks."""
    return distributed.run_on_ranks(_run, args)


def _run(args: argparse.Namespace, ranks: distributed.Ranks) -> int:
    from .cli import UserError
    from .overlay import _device

    names = list(METHODS) if args.methods == "all" else [name.strip() for name in args.methods.split(",")]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)} or 'all'")
    device = _device(distributed.device_for(ranks, args.device))
    loaded = load_model(args.model, args.weights, device)
    x, masks = _data(args, loaded)
    share = distributed.shard(list(range(x.shape[0])), ranks)
    x = x[share].to(device)
    masks = masks[share].to(device) if masks is not None else None
    table = [_score(name, create(name, loaded.model, args.layer), loaded.model, x, masks, args, ranks) for name in names]
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


def _data(args: argparse.Namespace, loaded) -> tuple[torch.Tensor, torch.Tensor | None]:
    mean = torch.tensor(loaded.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(loaded.std).reshape(1, 3, 1, 1)
    if not args.inputs:
        if args.model not in (None, "demo"):
            from .cli import UserError

            raise UserError("the demo set needs the demo model: give INPUT images for another --model")
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
        raise ValueError(f"no readable images in {', '.join(args.inputs)}")
    return (torch.stack(pixels) - mean) / std, None


def _score(name: str, explainer, model, x: torch.Tensor, masks, args, ranks: distributed.Ranks) -> dict[str, Any]:
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
