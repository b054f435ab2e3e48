"""Progress bars (tqdm) for long runs: the CLI's on a terminal, the API's when asked for with ``progress=``.

Every bar shows items done, items/s and the ETA. A terminal that reports no
width (a pseudo-terminal nobody sized: ``docker run -t``, some CI runners and
editor shells) would get a bar of zero columns and rows, which tqdm draws as nothing;
such a terminal gets a fixed size instead.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm import tqdm

from .errors import CamkitTypeError

FALLBACK_COLUMNS, FALLBACK_ROWS = 80, 24  # tqdm draws nothing with 0 rows either
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"

# What the API's ``progress=`` takes: False/None (no bar), True (a bar on stderr), or a text stream to draw on.
ProgressOption = bool | None | IO[str]


def terminal_columns(stream: Any) -> int:
    """The width of the terminal ``stream`` is on; 0 when it is not a terminal or reports no size."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def sizing(stream: Any) -> dict[str, Any]:
    """tqdm's width options for ``stream``: follow the terminal's width, or a fixed one where it reports none."""
    return (
        {"dynamic_ncols": True} if terminal_columns(stream) > 0 else {"ncols": FALLBACK_COLUMNS, "nrows": FALLBACK_ROWS}
    )


def bar(
    total: int, description: str, *, file: Any = None, disable: bool = False, unit: str = "img", **options: Any
) -> tqdm:
    """A tqdm bar on ``file`` (default stderr) sized to its terminal, or to 80 columns where the width is unknown."""
    stream = file if file is not None else sys.stderr
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=stream,
        disable=disable,
        bar_format=options.pop("bar_format", BAR_FORMAT),
        **sizing(stream),
        **options,
    )


def optional_bar(progress: ProgressOption, total: int, description: str, unit: str) -> tqdm:
    """The bar an API call's ``progress=`` asks for: none for False/None, stderr for True, else the given stream."""
    if progress is None or progress is False:
        return bar(total, description, disable=True, unit=unit)
    if progress is True:
        return bar(total, description, unit=unit)
    if not callable(getattr(progress, "write", None)):
        raise CamkitTypeError(
            f"progress={progress!r}: use True (a bar on stderr), False, or a text stream such as sys.stdout"
        )
    return bar(total, description, file=progress, unit=unit)


__all__ = ["FALLBACK_COLUMNS", "ProgressOption", "bar", "optional_bar", "sizing", "terminal_columns"]
