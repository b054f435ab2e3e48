"""Finding, decoding and writing images for the folder commands."""
from __future__ import annotations

import glob
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CamkitError, MissingDependency

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(relative: Path) -> Path:
    name = relative.name
    for suffix in (".nii.gz", *IMAGE_SUFFIXES, ".npy", ".nii"):
        if name.lower().endswith(suffix):
            return relative.with_name(name[: -len(suffix)])
    return relative.with_suffix("")


@dataclass(frozen=True)
class Source:
    """One input image and where its outputs go, relative to the output folder."""

    path: Path
    relative: Path  # relative output path without suffix, e.g. Path("cats/tabby")


def discover(inputs: list[str]) -> list[Source]:
    """Files, folders (recursive) and globs, sorted, each with the output path that mirrors its tree.

    Files found in a folder keep their path below that folder; single files and
    glob matches keep their path below the glob's fixed prefix. Two images whose
    names differ only in suffix keep the suffix in their output name.
    """
    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and (file.suffix.lower() in IMAGE_SUFFIXES or is_volume(file)):
                    found.append((file, file.relative_to(path)))
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(entry):
            base = Path(entry.split("*")[0].split("?")[0].split("[")[0])
            base = base if base.is_dir() else base.parent
            matches = sorted(Path(match) for match in glob.glob(entry, recursive=True))
            found.extend((match, match.relative_to(base)) for match in matches if match.is_file())
        else:
            raise CamkitError(f"input {entry} does not exist (give image files, folders or globs).")
    unique = {file.resolve(): (file, relative) for file, relative in found}
    stems: dict[Path, int] = {}
    for _, relative in unique.values():
        stems[_stem(relative)] = stems.get(_stem(relative), 0) + 1
    sources = [
        Source(file, _stem(relative) if stems[_stem(relative)] == 1
               else relative.with_name(relative.name.replace(".", "_")))
        for file, relative in unique.values()
    ]
    return sorted(sources, key=lambda source: str(source.path))


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB ``(3, H, W)``, upright per its EXIF orientation.

    Grayscale is repeated to RGB, transparency is composited on white, 16-bit
    and float images are scaled to 8 bits by their own value range.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
            if image.mode == "F":
                low, high = float(values.min()), float(values.max())
                values, top = values - low, max(high - low, 1e-12)
            image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8))
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

    NIfTI needs nibabel (``pip install 'camkit[nifti]'``); its voxel axes are kept in file order.
    """
    if path.name.lower().endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    else:
        try:
            import nibabel
        except ImportError:
            raise MissingDependency("reading NIfTI volumes needs nibabel: pip install 'camkit[nifti]'") from None
        array = np.asarray(nibabel.load(str(path)).get_fdata(), dtype=np.float32)
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


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    An interrupted run leaves either the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
