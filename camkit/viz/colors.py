"""Colormaps and overlays: batched torch on the maps' device; matplotlib only for its colormap tables.

The CLI writes what :func:`overlay` returns; notebooks draw the same pixels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CamkitError, CamkitTypeError

# A matplotlib colormap name ("jet") or a matplotlib Colormap object (matplotlib.colormaps["turbo"], a ListedColormap).
ColormapSpec = str | Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=32)
def _lut_cpu(name: str) -> torch.Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        examples = ", ".join(["jet", "turbo", "viridis", "inferno", "magma", "gray"])
        raise CamkitError(f"Unknown colormap {name!r}; use a matplotlib colormap name such as {examples}.") from None
    import numpy as np

    return torch.from_numpy(cmap(np.arange(cmap.N))[:, :3].astype("float32"))


def colormap_lut(name: ColormapSpec = "jet", device: torch.device | str | None = None) -> torch.Tensor:
    """A matplotlib colormap (its name or the Colormap object) as an ``(N, 3)`` float32 lookup table on ``device``."""
    lut = _lut_cpu(name) if isinstance(name, str) else _lut_of(name)
    return lut.to(device) if device is not None else lut


def _lut_of(colormap: Any) -> torch.Tensor:
    size = getattr(colormap, "N", None)
    if not callable(colormap) or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CamkitTypeError(
            f"colormap must be a matplotlib colormap name or a matplotlib Colormap object, got "
            f"{type(colormap).__name__}."
        )
    import numpy as np

    return torch.from_numpy(np.asarray(colormap(np.arange(size)), dtype="float32")[:, :3].copy())


def colorize(maps: torch.Tensor, colormap: ColormapSpec = "jet") -> torch.Tensor:
    """Maps ``(B, H, W)`` in [0, 1] to RGB ``(B, 3, H, W)`` in [0, 1].

    Bins exactly as matplotlib's ``Colormap.__call__`` does for floats: index
    ``floor(value * N)``, with 1.0 in the last bin, so the pixels equal
    ``cmap(value)``.
    """
    if maps.dim() != 3:
        raise CamkitError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}.")
    lut = colormap_lut(colormap, maps.device)
    index = (maps.float().clamp(0, 1) * lut.shape[0]).long().clamp_max(lut.shape[0] - 1)
    return lut[index].permute(0, 3, 1, 2)


def overlay(images: Any, maps: Any, alpha: float = 0.5, colormap: ColormapSpec = "jet") -> torch.Tensor:
    """``(1 - alpha) * image + alpha * colormap(map)``, ``(B, 3, H, W)`` in [0, 1].

    ``images`` are ``(B, 3 or 1, H, W)``: floats in [0, 1] or uint8 in 0..255
    (as ``camkit.load_images`` returns them), RGB or grayscale (repeated to
    RGB); torch tensors or numpy arrays of that layout. Maps of another size
    are resized bilinearly (half-pixel centres) to the images.
    """
    images, maps = _as_tensor(images, "images"), _as_tensor(maps, "maps")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise CamkitTypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__} {alpha!r}.")
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise CamkitError(f"images must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}.")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise CamkitError(f"maps must have shape (B={images.shape[0]}, h, w), got {tuple(maps.shape)}.")
    if not 0.0 <= alpha <= 1.0:
        raise CamkitError(f"alpha must lie in [0, 1], got {alpha}.")
    if maps.shape[1:] != images.shape[2:]:
        maps = F.interpolate(maps[:, None].float(), size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    images = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    return (1 - alpha) * images + alpha * colorize(maps, colormap).to(images.device)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "ndim"):
        if what == "images" and value.ndim == 3 and value.shape[-1] in (1, 3, 4):
            raise CamkitError(
                f"images is one numpy image {value.shape} in (H, W, C) layout; overlay takes batches "
                "(B, C, H, W): pass torch.from_numpy(image).permute(2, 0, 1)[None]."
            )
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(value))
    raise CamkitTypeError(f"{what} must be a torch tensor or a numpy array, got {type(value).__name__}.")


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` floats in [0, 1] to ``(B, H, W, 3)`` uint8, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def attribution_picture(attributions: torch.Tensor, contrast: float = 0.1) -> torch.Tensor:
    """Signed pixel attributions ``(B, C, H, W)`` as the pictures of the Grad-CAM paper, RGB ``(B, 3, H, W)`` in [0, 1].

    Per image: centred on its mean, divided by its standard deviation, times
    ``contrast``, around mid-grey 0.5 and clipped (the Grad-CAM authors'
    ``deprocess_image``, also pytorch-grad-cam's). Zero attribution is grey,
    positive brighter; three channels are shown as colour, any other count as
    their sum in grey.
    """
    values = attributions.float()
    if values.shape[1] != 3:
        values = values.sum(dim=1, keepdim=True).expand(-1, 3, *values.shape[2:])
    flat = values.flatten(1)
    shape = (-1,) + (1,) * (values.dim() - 1)
    spread = flat.std(dim=1, unbiased=False)
    centred = (values - flat.mean(dim=1).reshape(shape)) / torch.where(spread > 0, spread, 1.0).reshape(shape)
    return (centred * contrast + 0.5).clamp(0, 1)
