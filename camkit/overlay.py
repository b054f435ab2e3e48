"""``camkit overlay``: heatmaps over folders of images.

Decoding and resizing run in DataLoader workers, the explainers on batches on
the device, and blending, PNG encoding and writing in a writer thread pool, so
the three overlap. Every output is written atomically; a rerun skips images
whose outputs exist (``--overwrite`` redoes them) and so finishes an
interrupted job. A file that cannot be read is reported and skipped.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import BoundedSemaphore
from typing import Any

import torch
import torch.nn.functional as F

from . import distributed
from .explainers import METHODS, create
from .hooks import model_left_as_found
from .imageio import Source, discover, encode_npy, encode_png, is_volume, read_rgb, read_volume, write_atomically
from .models import LoadedModel, load_model
from .viz import overlay, to_uint8_hwc

MANIFEST_FIELDS = ("input", "output", "method", "predicted_class", "predicted_name", "score",
                   "explained_class", "status", "error")
NORMALISATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": ((0.0,) * 3, (1.0,) * 3)}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "overlay",
        help="write heatmap overlays for image files, folders or globs",
        description="Explain every image with one or more methods and write overlays at each image's own size. "
        "The output tree mirrors the input tree; OUT/manifest.csv lists every image, method and outcome.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs; "
                        "3-D volumes (.npy, .nii/.nii.gz with nibabel) become montages of their middle slices")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--method", default="gradcam", help=f"one of {', '.join(METHODS)}; several comma-separated; or 'all'")
    parser.add_argument("--model", default=None, help="torchvision name, a torch.export .pt2 file, or package.module:factory "
                        "(default: the bundled demo CNN)")
    parser.add_argument("--weights", default=None, help="local state-dict/checkpoint file, or a torchvision weight set "
                        "name such as DEFAULT (downloads)")
    parser.add_argument("--layer", default=None, help="dotted target layer name (default: automatic)")
    parser.add_argument("--target", default="top1", help="'top1' (each image's predicted class; for a segmenter the "
                        "non-background class covering most pixels) or a class index or name")
    parser.add_argument("--input-size", type=int, default=None, help="side the images are resized to (default: the model's)")
    parser.add_argument("--normalize", default=None, help="'imagenet', 'none', or 'm1,m2,m3:s1,s2,s3' (default: the model's)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    parser.add_argument("--colormap", default="jet", help="any matplotlib colormap name")
    parser.add_argument("--save-maps", choices=("npy", "png16"), default=None, help="also write raw maps at image size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding processes (0: in-process)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


@dataclass
class Item:
    index: int
    pixels: torch.Tensor | None  # (3, S, S) float, normalised
    original: torch.Tensor | None  # (3, H, W) uint8
    error: str | None


class Images(torch.utils.data.Dataset):
    """Decodes and resizes in the workers; a bad file becomes an error record, never an exception."""

    def __init__(self, sources: list[Source], size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.sources, self.size = sources, size
        self.mean = torch.tensor(mean).reshape(3, 1, 1)
        self.std = torch.tensor(std).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Item:
        try:
            original = read_rgb(self.sources[index].path)
        except Exception as error:  # noqa: BLE001 - any decoding failure is reported, not raised
            return Item(index, None, None, f"cannot read image: {_one_line(error)}")
        resized = F.interpolate(original[None].float() / 255, size=self.size, mode="bilinear",
                                antialias=True, align_corners=False)[0]
        return Item(index, (resized - self.mean) / self.std, original, None)


def run(args: argparse.Namespace) -> int:
    """Explain every image; under torchrun each rank takes its share and rank 0 merges the manifest."""
    return distributed.run_on_ranks(_run, args)


def _run(args: argparse.Namespace, ranks: distributed.Ranks) -> int:
    from .cli import UserError

    methods = list(METHODS) if args.method == "all" else [name.strip() for name in args.method.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise UserError(f"unknown method {', '.join(unknown) or repr(args.method)}; choose from {', '.join(METHODS)} or 'all'")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    device = _device(distributed.device_for(ranks, args.device))
    loaded = load_model(args.model, args.weights, device)
    size = (args.input_size, args.input_size) if args.input_size else loaded.input_size
    mean, std = _normalisation(args.normalize, loaded)
    target: int | None = None if args.target == "top1" else _class_index(args.target, loaded)
    explainers = {name: create(name, loaded.model, args.layer) for name in methods}

    out: Path = args.output
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".camkit-write-test-{ranks.rank}"
        write_atomically(probe, b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to output folder {out}: {error.strerror or error}") from None

    sources = discover(args.inputs)
    if not sources:
        raise UserError(f"no images found in {', '.join(args.inputs)} (looked for {', '.join(('png', 'jpg', 'bmp', 'tif', 'webp'))})")
    rows: list[dict[str, Any]] = []
    todo = []
    for index in distributed.shard(list(range(len(sources))), ranks):
        source = sources[index]
        outputs = [_output_path(out, source, method) for method in methods]
        if not args.overwrite and all(path.exists() for path in outputs):
            rows.extend(_row(source, path, method, status="skipped (exists)") for path, method in zip(outputs, methods))
        else:
            todo.append(index)

    volumes = [index for index in todo if is_volume(sources[index].path)]
    images = [index for index in todo if not is_volume(sources[index].path)]
    failures = _explain_all(sources, images, explainers, loaded, size, mean, std, target, args, rows)
    failures += _explain_volumes(sources, volumes, explainers, loaded, target, args, rows)
    if ranks.world == 1:
        _write_manifest(out / "manifest.csv", rows)
    else:
        # Each rank writes its own part; rank 0 merges them once all are done.
        part = out / f".manifest-part-{ranks.rank:05d}-of-{ranks.world:05d}.csv"
        _write_manifest(part, rows)
        distributed.barrier(ranks)
        if ranks.is_main:
            parts = sorted(out.glob(f".manifest-part-*-of-{ranks.world:05d}.csv"))
            merged = [row for path in parts for row in csv.DictReader(open(path, newline="", encoding="utf-8"))]
            _write_manifest(out / "manifest.csv", merged)
            for path in parts:
                path.unlink()
    written = int(distributed.total(sum(row["status"] == "ok" for row in rows), ranks))
    skipped = int(distributed.total(sum(row["status"].startswith("skipped") for row in rows), ranks))
    failures = int(distributed.total(failures, ranks))
    if not args.quiet and ranks.is_main:
        print(f"camkit: {written} overlays written, {skipped} skipped as already done, {failures} images failed; "
              f"manifest: {out / 'manifest.csv'}", file=sys.stderr)
    return 1 if failures else 0


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    rows = sorted(rows, key=lambda row: (row["input"], row["method"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode("utf-8"))


def _explain_all(sources, todo, explainers, loaded: LoadedModel, size, mean, std, target, args, rows) -> int:
    dataset = torch.utils.data.Subset(Images(sources, size, mean, std), todo)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=list,
        worker_init_fn=_single_thread, persistent_workers=False,
    )
    progress = _progress(len(todo), args.quiet)
    choose_target = _TargetChooser(loaded.model, target)
    failures = 0
    device = next(iter(loaded.model.parameters()), torch.empty(0)).device
    slots = BoundedSemaphore(4 * max(1, args.batch_size))  # bounds images waiting to be written
    pending: list[tuple[Future, dict[str, Any]]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="camkit-writer") as writer:
        for batch in loader:
            good = [item for item in batch if item.error is None]
            for item in batch:
                if item.error is not None:
                    failures += 1
                    source = sources[item.index]
                    print(f"camkit: {source.path}: {item.error}", file=sys.stderr)
                    rows.extend(_row(source, "", method, status="error", error=item.error) for method in explainers)
            if good:
                x = torch.stack([item.pixels for item in good]).to(device)
                batch_target = choose_target(x)
                for method, explainer in explainers.items():
                    result = explainer.explain(x, batch_target)
                    maps = result.maps.cpu()
                    for row_index, item in enumerate(good):
                        source = sources[item.index]
                        path = _output_path(args.output, source, method)
                        row = _row(source, path, method, status="ok", result=result, row_index=row_index, loaded=loaded,
                                   explained=_explained(batch_target, row_index))
                        slots.acquire()
                        future = writer.submit(_write, item.original, maps[row_index], path, args)
                        future.add_done_callback(lambda _f: slots.release())
                        pending.append((future, row))
            progress.update(len(batch))
            pending = _collect(pending, rows, wait=False)
        _collect(pending, rows, wait=True)
    progress.close()
    failed_writes = {row["input"] for row in rows if row["status"] == "error" and row["error"].startswith("cannot write")}
    return failures + len(failed_writes)


def _write(original: torch.Tensor, layer_map: torch.Tensor, path: Path, args: argparse.Namespace) -> None:
    height, width = original.shape[1:]
    full = F.interpolate(layer_map[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
    blended = overlay(original[None].float() / 255, full, alpha=args.alpha, colormap=args.colormap)
    write_atomically(path, encode_png(to_uint8_hwc(blended)[0].numpy()))
    if args.save_maps == "npy":
        write_atomically(path.with_name(path.stem + "_map.npy"), encode_npy(full[0].numpy()))
    elif args.save_maps == "png16":
        write_atomically(path.with_name(path.stem + "_map.png"),
                         encode_png((full[0] * 65535).round().clamp(0, 65535).numpy().astype("uint16")))


def _collect(pending, rows, wait: bool):
    remaining = []
    for future, row in pending:
        if not wait and not future.done():
            remaining.append((future, row))
            continue
        error = future.exception()
        if error is not None:
            row.update(status="error", error=f"cannot write output: {_one_line(error)}")
            print(f"camkit: {row['output']}: {row['error']}", file=sys.stderr)
        rows.append(row)
    return remaining


def _row(source: Source, path: Path | str, method: str, *, status: str, error: str = "", result=None,
         row_index: int = 0, loaded: LoadedModel | None = None, explained: int | None = None) -> dict[str, Any]:
    row = {"input": str(source.path), "output": str(path), "method": method, "predicted_class": "",
           "predicted_name": "", "score": "", "explained_class": "", "status": status, "error": error}
    if result is not None:
        if result.predictions is not None:
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


class _TargetChooser:
    """The CLI's ``--target`` per batch: a class for classifiers, a SegmentationTarget for segmenters.

    Whether the model is a segmenter is learnt from one forward pass on the
    first batch. A segmenter's "top1" is, per image, the non-background class
    (class 0 is background) that the model assigns the most pixels to.
    """

    def __init__(self, model: torch.nn.Module, target: int | None) -> None:
        self.model, self.target = model, target
        self.dense: bool | None = None

    def __call__(self, x: torch.Tensor) -> Any:
        from .targets import SegmentationTarget, logits_of

        if self.dense is False:
            return self.target
        if self.dense and self.target is not None:
            return SegmentationTarget(self.target)
        with model_left_as_found(self.model), torch.no_grad():
            logits = logits_of(self.model(x))
        self.dense = logits.dim() >= 4
        if not self.dense:
            return self.target
        if self.target is not None:
            return SegmentationTarget(self.target)
        areas = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).flatten(1, -2).sum(1)
        if logits.shape[1] > 1:
            areas[:, 0] = -1
        return SegmentationTarget(areas.argmax(1))


def _explained(batch_target: Any, row_index: int) -> int | None:
    from .targets import SegmentationTarget

    if isinstance(batch_target, SegmentationTarget):
        category = batch_target.category
        return int(category[row_index]) if isinstance(category, torch.Tensor) and category.dim() else int(category)
    return None


def _explain_volumes(sources, indices, explainers, loaded: LoadedModel, target, args, rows) -> int:
    """3-D volumes one at a time: each explained at the model's input size, drawn as a montage of its middle slices."""
    failures = 0
    device = next(iter(loaded.model.parameters()), torch.empty(0)).device
    channels = _input_channels(loaded.model)
    choose_target = _TargetChooser(loaded.model, target)
    for index in indices:
        source = sources[index]
        try:
            volume = read_volume(source.path)
        except Exception as error:  # noqa: BLE001 - a bad file is reported, the run goes on
            failures += 1
            message = f"cannot read volume: {_one_line(error)}"
            print(f"camkit: {source.path}: {message}", file=sys.stderr)
            rows.extend(_row(source, "", method, status="error", error=message) for method in explainers)
            continue
        # Each volume standardised by its own statistics, as is usual for scans.
        standardised = (volume - volume.mean()) / volume.std().clamp_min(1e-6)
        if channels and standardised.shape[0] == 1 and channels > 1:
            standardised = standardised.expand(channels, -1, -1, -1)
        size = loaded.input_size if len(loaded.input_size) == 3 else tuple(volume.shape[1:])
        x = F.interpolate(standardised[None], size=size, mode="trilinear", align_corners=False).to(device)
        batch_target = choose_target(x)
        for method, explainer in explainers.items():
            result = explainer.explain(x, batch_target)
            full = F.interpolate(result.maps[:, None].cpu(), size=tuple(volume.shape[1:]), mode="trilinear",
                                 align_corners=False)[0, 0]
            path = _output_path(args.output, source, method)
            shown = (volume[0] - volume[0].min()) / (volume[0].max() - volume[0].min()).clamp_min(1e-12)
            write_atomically(path, encode_png(to_uint8_hwc(_montage(shown, full, args.alpha, args.colormap))[0].numpy()))
            if args.save_maps == "npy":
                write_atomically(path.with_name(path.stem + "_map.npy"), encode_npy(full.numpy()))
            rows.append(_row(source, path, method, status="ok", result=result, loaded=loaded,
                             explained=_explained(batch_target, 0)))
    return failures


def _montage(volume: torch.Tensor, heat: torch.Tensor, alpha: float, colormap: str) -> torch.Tensor:
    """The middle axial, coronal and sagittal slices side by side, each overlaid, ``(1, 3, H', W')``."""
    depth, height, width = volume.shape
    slices = [(volume[depth // 2], heat[depth // 2]), (volume[:, height // 2], heat[:, height // 2]),
              (volume[:, :, width // 2], heat[:, :, width // 2])]
    tallest = max(image.shape[0] for image, _ in slices)
    panels = []
    for image, slice_map in slices:
        panel = overlay(image[None, None], slice_map[None], alpha=alpha, colormap=colormap)
        panels.append(F.pad(panel, (0, 2, 0, tallest - panel.shape[2])))  # 2-pixel gutter, top-aligned
    return torch.cat(panels, dim=3)


def _input_channels(model: torch.nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            return module.in_channels
    return None


def _output_path(out: Path, source: Source, method: str) -> Path:
    safe = method.replace("+", "p")
    return out / source.relative.parent / f"{source.relative.name}_{safe}.png"


def _device(name: str) -> torch.device:
    from .cli import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def _normalisation(spec: str | None, loaded: LoadedModel) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from .cli import UserError

    if spec is None:
        return loaded.mean, loaded.std
    if spec in NORMALISATIONS:
        return NORMALISATIONS[spec]
    try:
        mean_text, std_text = spec.split(":")
        mean = tuple(float(value) for value in mean_text.split(","))
        std = tuple(float(value) for value in std_text.split(","))
    except ValueError:
        raise UserError(f"--normalize {spec!r}: use imagenet, none, or m1,m2,m3:s1,s2,s3") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"--normalize {spec!r}: give three means and three positive stds")
    return mean, std


def _class_index(text: str, loaded: LoadedModel) -> int:
    from .cli import UserError

    try:
        return int(text)
    except ValueError:
        names = loaded.class_names or []
        if text in names:
            return names.index(text)
        raise UserError(f"--target {text!r}: use top1, a class index, or a class name of this model") from None


def _progress(total: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="camkit overlay", file=sys.stderr)


class _NoProgress:
    def update(self, _count: int) -> None:
        return None

    def close(self) -> None:
        return None


def _single_thread(_worker: int) -> None:
    # Decoding workers share the machine with the model: one thread each.
    torch.set_num_threads(1)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
