"""A caption strip under an overlay: what the picture shows (method, class, probability) and a colour bar.

One overlay file alone then says what it is. The strip is drawn below the
image, which keeps every pixel of the overlay itself; its text is wrapped to
the image's width, so small images get more lines rather than cut words.
PIL draws the text (imported on first use); the colour bar is the same lookup
table the overlay used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .colors import ColormapSpec, colormap_lut

BACKGROUND = 255  # white strip, black text
MIN_FONT, MAX_FONT = 9, 22


def font_size(width: int) -> int:
    """The caption's font size for an image ``width`` pixels wide."""
    return max(MIN_FONT, min(MAX_FONT, width // 26))


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrapped(text: str, width: int, font: Any) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def captioned(image: torch.Tensor, text: str, colormap: ColormapSpec = "jet") -> torch.Tensor:
    """``image`` ``(H, W, 3)`` uint8 with a strip below it: ``text`` and a 0..1 colour bar, ``(H + h, W, 3)`` uint8."""
    import numpy as np
    from PIL import Image, ImageDraw

    width = int(image.shape[1])
    size = font_size(width)
    font = _font(size)
    margin = max(2, size // 3)
    lines = _wrapped(text, width - 2 * margin, font)
    line_height = size + max(1, size // 4)
    bar_height = max(4, size // 2)
    strip_height = margin + line_height * (len(lines) + 1) + bar_height + margin
    strip = Image.new("RGB", (width, strip_height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * line_height), line, fill=(0, 0, 0), font=font)
    bar_top = margin + len(lines) * line_height
    draw.text((margin, bar_top + bar_height + 1), "0", fill=(0, 0, 0), font=font)  # the bar's ends: map values
    draw.text((width - margin - font.getlength("1"), bar_top + bar_height + 1), "1", fill=(0, 0, 0), font=font)
    pixels = torch.from_numpy(np.asarray(strip).copy())
    pixels[bar_top : bar_top + bar_height, margin : width - margin] = _colour_bar(
        width - 2 * margin, bar_height, colormap
    )
    return torch.cat([image.cpu(), pixels], dim=0)


def _colour_bar(width: int, height: int, colormap: ColormapSpec) -> torch.Tensor:
    """``(height, width, 3)`` uint8: the colormap from 0 (left) to 1 (right), binned as the overlay bins."""
    lut = colormap_lut(colormap)
    values = (torch.arange(max(width, 1), dtype=torch.float32) + 0.5) / max(width, 1)
    index = (values * lut.shape[0]).long().clamp_max(lut.shape[0] - 1)
    row = (lut[index] * 255).round().to(torch.uint8)
    return row[None].expand(height, -1, -1)[:, :width]


__all__ = ["captioned", "font_size"]
