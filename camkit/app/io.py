"""Finding, decoding and writing images for the folder commands."""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import CamkitError, MissingDependency
from ..progress import ProgressOption, optional_bar

logger = logging.getLogger("camkit")

# GIFs count as images wherever they are found (named or in a folder): their first frame is explained.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(relative: Path) -> Path:
    name = relative.name
    for suffix in (".nii.gz", *IMAGE_SUFFIXES, ".npy", ".nii"):
        if name.lower().endswith(suffix):
            return relative.with_name(name[: -len(suffix)])
    return relative.with_suffix("")


def _suffix(name: str) -> str:
    return name[len(_stem(Path(name)).name) :]


@dataclass(frozen=True)
class Source:
    """One input file and where its outputs go, relative to the output folder."""

    path: Path
    relative: Path  # relative output path without suffix, e.g. Path("cats/tabby")
    unreadable: str | None = None  # why a folder below an input could not be listed (reported as that input's failure)


def _wanted(file: Path) -> bool:
    return file.suffix.lower() in IMAGE_SUFFIXES or is_volume(file)


def _walk(root: Path, skip: Path | None, unlistable: dict[Path, str] | None = None) -> Iterator[Path]:
    """Every file below ``root``, sorted, following symlinked folders but never into the same folder twice.

    Folders that cannot be listed are yielded too, with the reason in ``unlistable``."""
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path) -> Iterator[Path]:
        try:
            status = folder.stat()
        except OSError:
            return
        if (status.st_dev, status.st_ino) in seen or (skip is not None and folder.resolve() == skip):
            return
        seen.add((status.st_dev, status.st_ino))
        try:
            entries = sorted(folder.iterdir())
        except OSError as error:
            if unlistable is not None:
                unlistable[folder] = f"cannot list folder: {error.strerror or error}"
                yield folder
            return
        for entry in entries:
            if entry.is_dir():
                yield from visit(entry)
            elif entry.is_file():
                yield entry

    yield from visit(root)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob relative to its fixed prefix as a regex: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 2 :]:
            end = pattern.index("]", index + 2)
            body = pattern[index + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            index = end + 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out) + r"\Z")


def _glob(entry: str, skip: Path | None) -> tuple[Path, list[Path]]:
    """The glob's fixed folder and its matching files (the same loop-safe walk as a folder input)."""
    parts = Path(entry).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    matcher = _glob_regex("/".join(parts[fixed:]))
    return base, [file for file in _walk(base, skip) if matcher.match(file.relative_to(base).as_posix())]


def discover(inputs: list[str], skip: Path | None = None) -> list[Source]:
    """Files, folders (recursive) and globs, sorted, each with a unique output path that mirrors its tree.

    Naming rule (README "Output names"): a file found in a folder or by a glob
    keeps its path below that folder (the glob's fixed prefix); a file given
    by itself keeps its name. Two inputs that would share an output stem get
    their suffix kept in the name (``a.png``, ``a.jpg`` -> ``a_png``, ``a_jpg``);
    inputs from different entries that still collide (``x/a.png`` and
    ``y/a.png`` given as two folders) go under their entry's folder name
    (``x/a``, ``y/a``), and any remaining clash gets ``-2``, ``-3``. Nothing
    under ``skip`` (the output folder) is ever read as input; symlinked folders
    are followed, but no folder twice.
    """
    found: list[tuple[Path, Path, int]] = []  # file, relative path, index of the entry it came from
    unlistable: dict[Path, str] = {}
    for number, entry in enumerate(inputs):
        path = Path(entry)
        if path.is_dir():
            found.extend(
                (file, file.relative_to(path), number)
                for file in _walk(path, skip, unlistable)
                if _wanted(file) or file in unlistable
            )
        elif path.is_file():
            found.append((path, Path(path.name), number))
        elif glob.has_magic(entry):
            base, matches = _glob(entry, skip)
            found.extend((match, match.relative_to(base), number) for match in matches if _wanted(match))
        else:
            raise CamkitError(f"input {entry} does not exist (give image files, folders or globs).")
    unique: dict[Path, tuple[Path, Path, int]] = {}
    for file, relative, number in found:
        if skip is not None and _inside(file.resolve(), skip):
            continue
        unique.setdefault(file.resolve(), (file, relative, number))
    sources = _named([value for _, value in sorted(unique.items(), key=lambda item: str(item[1][0]))], inputs)
    return [
        Source(source.path, source.relative, unlistable[source.path]) if source.path in unlistable else source
        for source in sources
    ]


def _named(found: list[tuple[Path, Path, int]], inputs: list[str]) -> list[Source]:
    def groups(names: list[Path]) -> dict[Path, list[int]]:
        by_name: dict[Path, list[int]] = {}
        for index, name in enumerate(names):
            by_name.setdefault(name, []).append(index)
        return by_name

    names = [_stem(relative) for _, relative, _ in found]
    for indices in groups(names).values():
        if len({found[index][1] for index in indices}) > 1:  # same stem, other suffixes: keep the suffix
            for index in indices:
                relative = found[index][1]
                names[index] = _stem(relative).with_name(
                    _stem(relative).name + "_" + _suffix(relative.name)[1:].replace(".", "_")
                )
    for indices in groups(names).values():
        if len({found[index][2] for index in indices}) > 1:  # from different entries: under the entry's name
            for index in indices:
                names[index] = Path(_entry_label(inputs[found[index][2]])) / names[index]
    for indices in groups(names).values():
        for count, index in enumerate(indices[1:], start=2):
            names[index] = names[index].with_name(f"{names[index].name}-{count}")
    return [Source(file, _short(name)) for (file, _, _), name in zip(found, names)]


def _entry_label(entry: str) -> str:
    parts = [part for part in Path(entry).parts if not glob.has_magic(part)]
    return (parts[-1] if parts else "input").strip("/") or "input"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# Leave room for "_<method>_map.npy" and a temporary name within the usual 255-byte limit.
MAX_STEM_BYTES = 200


def _short(relative: Path) -> Path:
    """A name too long for the file system is cut and given a short hash of the full name, so it stays unique."""
    name = relative.name
    if len(os.fsencode(name)) <= MAX_STEM_BYTES:
        return relative
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:10]
    cut = os.fsencode(name)[: MAX_STEM_BYTES - 11].decode("utf-8", errors="ignore")
    return relative.with_name(f"{cut}~{digest}")


# Images of more pixels are decoded, explained and drawn at a size reduced by a whole factor, so that a
# 10000 x 10000 scan costs about as much memory as a 4096 x 4096 one (one line on the camkit logger says so).
MAX_DRAWN_PIXELS = 4096 * 4096


def read_rgb(path: Path | BinaryIO, max_pixels: int = MAX_DRAWN_PIXELS) -> torch.Tensor:
    """An image file as uint8 RGB ``(3, H, W)``, upright per its EXIF orientation.

    An image of more than ``max_pixels`` pixels is reduced by the smallest whole factor that brings it
    under (box filter; JPEGs are decoded at that scale directly), before it is converted to RGB, so the
    memory peak stays a small multiple of the returned image; PIL's decompression-bomb limit (about 179
    megapixels) still refuses larger files.

    Grayscale is repeated to RGB and transparency composited on white. Images
    of more than 8 bits (16-bit, 32-bit integer, float; e.g. 12-bit scans
    stored in 16-bit PNGs) are scaled to 8 bits by their own value range,
    minimum to 0 and maximum to 255, as a viewer's auto-window does: 12-bit
    data uses all 256 levels instead of the darkest sixteenth.
    """
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        # camkit says what it does about a large image in its own line, below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened: Image.Image = Image.open(path)
        except (Image.UnidentifiedImageError, ImportError) as error:
            # ImportError: a format plugin another package registered failed while PIL tried it (ultralytics'
            # HEIF opener without pi_heif), which would otherwise be reported instead of "not an image".
            raise CamkitError(f"not an image format PIL can read ({type(error).__name__}: {error})") from None
        except Image.DecompressionBombError:
            raise CamkitError(
                "image has too many pixels to decode safely (over PIL's decompression-bomb limit of "
                f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels)"
            ) from None
    with opened as image:
        width, height = image.size
        factor = math.ceil(math.sqrt(width * height / max_pixels)) if width * height > max_pixels else 1
        if factor > 1:
            target = (math.ceil(width / factor), math.ceil(height / factor))
            image.draft(image.mode, target)  # a JPEG decodes at a reduced scale at least as large as target
            image = image.reduce(max(1, math.ceil(image.size[0] / target[0])))
            logger.warning(
                "%s: %d x %d pixels, explained and drawn at %d x %d to bound memory (images over %.1f "
                "megapixels are reduced)",
                path,
                width,
                height,
                *image.size,
                max_pixels / 1e6,
            )
        else:
            image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.asarray(image, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
            image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        rgb = np.asarray(image.convert("RGB"))
    if rgb.size == 0:
        raise CamkitError("image has no pixels")
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def read_volume(path: Path) -> torch.Tensor:
    """A 3-D volume as float32 ``(C, D, H, W)``: ``.npy`` arrays (D, H, W) or (C, D, H, W), or NIfTI.

    NIfTI needs nibabel (``pip install 'camkit[nifti]'``); its voxels are reoriented to the closest
    canonical (RAS+) orientation first, so that the montage's axial, coronal and sagittal slices are
    those, whatever order the file stores its axes in.
    """
    if path.name.lower().endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    else:
        try:
            import nibabel
        except ImportError:
            raise MissingDependency("reading NIfTI volumes needs nibabel: pip install 'camkit[nifti]'") from None
        canonical = nibabel.as_closest_canonical(nibabel.load(str(path)))
        array = np.asarray(canonical.get_fdata(), dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or min(array.shape) < 1:
        raise CamkitError(f"a volume must have shape (D, H, W) or (C, D, H, W), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise CamkitError(f"a volume must hold numbers, got dtype {array.dtype}")
    volume = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(volume).all()):
        raise CamkitError("the volume contains NaN or infinite values")
    return volume


def _temporary_prefix(path: Path) -> str:
    # A short fixed-length prefix derived from the final name: long names stay within 255 bytes,
    # and a resume can find (and remove) the leftovers of exactly this output.
    return ".camkit-" + hashlib.sha1(os.fsencode(path.name)).hexdigest()[:12] + "."


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    An interrupted run leaves either the old file or the new one, never half of
    one; the file gets the permissions the user's umask gives new files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{_temporary_prefix(path)}{secrets.token_hex(4)}.part"
    try:
        # 0o666 filtered by the process umask, as for any new file (mkstemp would force 0o600).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_parts(path: Path) -> None:
    """Delete temporary files an interrupted run left for ``path``."""
    if path.parent.is_dir():
        for stale in path.parent.glob(glob.escape(_temporary_prefix(path)) + "*.part"):
            stale.unlink(missing_ok=True)


def encode_png(rgb_hwc: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8/uint16 array."""
    import cv2

    array = rgb_hwc[:, :, ::-1] if rgb_hwc.ndim == 3 else rgb_hwc
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class LoadedImages(tuple):
    """``(batch, originals)`` as :func:`load_images` returns it, with what was read and what was skipped.

    It unpacks as a pair (``batch, originals = camkit.load_images(...)``); ``paths`` names each image of the
    batch (a file path or URL), ``skipped`` lists ``(path, reason)`` for the files ``errors="skip"`` left out.
    """

    paths: list[str]
    skipped: list[tuple[str, str]]

    def __new__(
        cls, batch: torch.Tensor, originals: list[torch.Tensor], paths: list[str], skipped: list[tuple[str, str]]
    ) -> LoadedImages:
        loaded = super().__new__(cls, (batch, originals))
        loaded.paths, loaded.skipped = paths, skipped
        return loaded

    @property
    def batch(self) -> torch.Tensor:
        return self[0]

    @property
    def originals(self) -> list[torch.Tensor]:
        return self[1]


URL_TIMEOUT_SECONDS = 30


def is_url(entry: str | Path) -> bool:
    return isinstance(entry, str) and entry.lower().startswith(("http://", "https://"))


def read_url(url: str) -> bytes:
    """The bytes at ``url``; a network failure is a CamkitError that says what to do offline."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_SECONDS) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        raise CamkitError(
            f"cannot download {url} ({reason}); check the network, or download the image and pass its file"
        ) from None


def load_images(
    paths: str | Path | list[str | Path],
    size: int | tuple[int, int] = 224,
    normalize: Any = "imagenet",
    *,
    errors: str = "raise",
    progress: ProgressOption = False,
) -> LoadedImages:
    """Image files, folders, globs or http(s) URLs to a model-ready batch, and the originals to draw overlays on.

    Returns ``(batch, originals)``: ``batch`` is float32 ``(B, 3, *size)``,
    resized with antialiasing and normalised; ``originals`` are the uint8
    ``(3, H, W)`` images at their own size, in the same (sorted) order, ready
    for ``result.with_display(originals)``.
    ``normalize`` is ``"imagenet"``, ``"none"``, ``(mean, std)``, or a
    torchvision weights enum member (``ResNet50_Weights.DEFAULT``), whose own
    preprocessing (resize, crop, normalise) is then used and ``size`` ignored;
    the originals are then cropped to the part of each image the model sees
    (at full resolution), so that maps drawn over them are aligned.
    ``errors="raise"`` (default): a file that cannot be read raises a
    CamkitError naming it; ``errors="skip"``: it is left out and listed in the
    result's ``skipped`` as ``(path, reason)``, as the CLI does.
    ``progress=True`` draws a bar (files read, files/s, ETA) on stderr while
    the files are read; a text stream draws it there instead.
    """
    import torch.nn.functional as F

    if errors not in ("raise", "skip"):
        raise CamkitError(f"errors={errors!r}: use 'raise' or 'skip'")
    entries = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[tuple[str, Any]] = []  # (name, what to open: a path or the downloaded bytes)
    local = [str(entry) for entry in entries if not is_url(entry)]
    sources = discover(local) if local else []
    found += [(str(source.path), source.path) for source in sources if not is_volume(source.path)]
    found += [(str(entry), entry) for entry in entries if is_url(entry)]
    if not found:
        raise CamkitError(f"no images found in {', '.join(map(str, entries))}")
    originals: list[torch.Tensor] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    with optional_bar(progress, len(found), "camkit.load_images", unit="file") as bar:
        for name, where in found:
            _read_one(name, where, errors, originals, names, skipped)
            bar.update(1)
    if not originals:
        raise CamkitError(f"none of the {len(found)} images could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    transforms = getattr(normalize, "transforms", None)
    if callable(transforms):  # a torchvision weights enum: its own resize, crop and normalisation
        preprocess = transforms()
        batch = torch.stack([preprocess(image) for image in originals])
        return LoadedImages(batch, [seen_part(image, preprocess) for image in originals], names, skipped)
    mean, std = _mean_std(normalize)
    side = (size, size) if isinstance(size, int) else tuple(size)
    if len(side) != 2 or min(side) < 1:
        raise CamkitError(f"size must be a positive int or (height, width), got {size!r}")
    resized = torch.cat(
        [
            F.interpolate(image[None].float() / 255, size=side, mode="bilinear", antialias=True, align_corners=False)
            for image in originals
        ]
    )
    return LoadedImages((resized - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1), originals, names, skipped)


def _read_one(
    name: str,
    where: Any,
    errors: str,
    originals: list[torch.Tensor],
    names: list[str],
    skipped: list[tuple[str, str]],
) -> None:
    """Read one file or URL into ``originals``/``names``; a failure raises or joins ``skipped`` as ``errors`` says."""
    try:
        originals.append(read_rgb(io.BytesIO(read_url(where)) if is_url(where) else where))
        names.append(name)
    except Exception as error:
        reason = str(error) if isinstance(error, CamkitError) else f"{type(error).__name__}: {error}"
        if errors == "raise" and is_url(where) and isinstance(error, CamkitError):
            raise  # the download's own message names the URL and what to do
        if errors == "raise":
            raise CamkitError(
                f"cannot read image {name}: {reason.splitlines()[0] if reason else ''}; pass "
                "errors='skip' to leave unreadable files out"
            ) from None
        skipped.append((name, reason))


def seen_part(image: torch.Tensor, preprocess: Any) -> torch.Tensor:
    """The part of ``image`` (uint8 ``(3, H, W)``) that a resize-then-centre-crop ``preprocess`` keeps, at full size.

    torchvision's classification presets resize the shorter side to ``resize_size`` and crop the centre
    ``crop_size``; the same region of the original is returned, so a map of the model's input lies on it exactly.
    Any other preprocessing leaves the image whole.
    """
    resize, crop = getattr(preprocess, "resize_size", None), getattr(preprocess, "crop_size", None)
    if not resize or not crop:
        return image
    height, width = image.shape[1:]
    scale = float(resize[0]) / min(height, width)
    crop_h, crop_w = (crop[0], crop[0]) if len(crop) == 1 else (crop[0], crop[1])
    keep_h, keep_w = min(height, round(crop_h / scale)), min(width, round(crop_w / scale))
    top, left = round((height - keep_h) / 2), round((width - keep_w) / 2)
    return image[:, top : top + keep_h, left : left + keep_w]


def _mean_std(normalize: Any) -> tuple[torch.Tensor, torch.Tensor]:
    named = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": ((0.0,) * 3, (1.0,) * 3)}
    if isinstance(normalize, str):
        if normalize not in named:
            raise CamkitError(
                f"normalize={normalize!r}: use 'imagenet', 'none', (mean, std) or a torchvision weights enum"
            )
        normalize = named[normalize]
    try:
        mean, std = (torch.as_tensor(values, dtype=torch.float32).reshape(3) for values in normalize)
    except (TypeError, ValueError, RuntimeError):
        raise CamkitError("normalize=(mean, std) needs three means and three stds") from None
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CamkitError("normalize=(mean, std): means must be finite and stds finite and positive")
    return mean, std
