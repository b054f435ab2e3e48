"""The folder run behind ``camkit overlay``: heatmaps over files, folders and globs of images and volumes.

Decoding and resizing run in DataLoader workers, the explainers on batches on
the device, and blending, PNG encoding and writing in a writer thread pool, so
the three overlap. Every output is written atomically; a rerun skips images
whose outputs exist (``--overwrite`` redoes them) and so finishes an
interrupted job. A file that cannot be read is reported and skipped.
"""
from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import BoundedSemaphore
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CamkitError
from ..explainers import METHODS, create
from ..modes import evaluation
from ..targets import SegmentationTarget, logits_of
from ..viz import overlay, to_uint8_hwc
from . import distributed
from .io import Source, discover, encode_npy, encode_png, is_volume, read_rgb, read_volume, write_atomically
from .manifest import write_manifest
from .models import LoadedModel, load_model, resolve_device

NORMALISATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": ((0.0,) * 3, (1.0,) * 3)}


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
    workers: int = 0
    overwrite: bool = False
    quiet: bool = False


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


def run(args: OverlayJob) -> int:
    """Explain every image; under torchrun each rank takes its share and rank 0 merges the manifest."""
    return distributed.run_on_ranks(_run, args)


def _run(args: OverlayJob, ranks: distributed.Ranks) -> int:
    methods = list(METHODS) if args.method == "all" else [name.strip() for name in args.method.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise CamkitError(f"unknown method {', '.join(unknown) or repr(args.method)}; choose from {', '.join(METHODS)} or 'all'")
    if not 0.0 <= args.alpha <= 1.0:
        raise CamkitError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        raise CamkitError("--batch-size must be at least 1")
    device = resolve_device(distributed.device_for(ranks, args.device))
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
        raise CamkitError(f"cannot write to output folder {out}: {error.strerror or error}") from None

    sources = discover(args.inputs)
    if not sources:
        raise CamkitError(f"no images found in {', '.join(args.inputs)} (looked for {', '.join(('png', 'jpg', 'bmp', 'tif', 'webp'))})")
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
    write_manifest(out, rows, ranks)
    written = int(distributed.total(sum(row["status"] == "ok" for row in rows), ranks))
    skipped = int(distributed.total(sum(row["status"].startswith("skipped") for row in rows), ranks))
    failures = int(distributed.total(failures, ranks))
    if not args.quiet and ranks.is_main:
        print(f"camkit: {written} overlays written, {skipped} skipped as already done, {failures} images failed; "
              f"manifest: {out / 'manifest.csv'}", file=sys.stderr)
    return 1 if failures else 0


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


def _write(original: torch.Tensor, layer_map: torch.Tensor, path: Path, args: OverlayJob) -> None:
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
        if self.dense is False:
            return self.target
        if self.dense and self.target is not None:
            return SegmentationTarget(self.target)
        with evaluation(self.model), torch.no_grad():
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


def _normalisation(spec: str | None, loaded: LoadedModel) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if spec is None:
        return loaded.mean, loaded.std
    if spec in NORMALISATIONS:
        return NORMALISATIONS[spec]
    try:
        mean_text, std_text = spec.split(":")
        mean = tuple(float(value) for value in mean_text.split(","))
        std = tuple(float(value) for value in std_text.split(","))
    except ValueError:
        raise CamkitError(f"--normalize {spec!r}: use imagenet, none, or m1,m2,m3:s1,s2,s3") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CamkitError(f"--normalize {spec!r}: give three means and three positive stds")
    return mean, std


def _class_index(text: str, loaded: LoadedModel) -> int:
    try:
        return int(text)
    except ValueError:
        names = loaded.class_names or []
        if text in names:
            return names.index(text)
        raise CamkitError(f"--target {text!r}: use top1, a class index, or a class name of this model") from None


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
