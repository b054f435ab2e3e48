"""camkit.progress: the bars' sizing and the API's opt-in ``progress=`` values."""
from __future__ import annotations

import io

import pytest

import camkit
from camkit import progress


def test_a_stream_that_is_no_terminal_gets_a_fixed_size_not_zero() -> None:
    stream = io.StringIO()
    assert progress.terminal_columns(stream) == 0
    assert progress.sizing(stream) == {"ncols": progress.FALLBACK_COLUMNS, "nrows": progress.FALLBACK_ROWS}
    with progress.bar(4, "work", file=stream, mininterval=0) as shown:
        shown.update(4)
    lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line]
    assert lines and lines[-1].startswith("work: 100%") and "4/4 img" in lines[-1]
    assert max(len(line) for line in lines) <= progress.FALLBACK_COLUMNS


@pytest.mark.parametrize("value", [False, None])
def test_progress_off_draws_nothing(value, capsys) -> None:
    with progress.optional_bar(value, 3, "work", unit="file") as shown:
        shown.update(3)
    assert shown.disable and capsys.readouterr().err == ""


def test_progress_rejects_what_is_neither_a_flag_nor_a_stream() -> None:
    with pytest.raises(camkit.CamkitTypeError, match="text stream"):
        progress.optional_bar("yes", 3, "work", unit="file")
