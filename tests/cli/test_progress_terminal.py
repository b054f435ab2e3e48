"""The progress bar as a user sees it: ``camkit overlay`` in a real process whose stderr is a pseudo-terminal.

No monkeypatching: the child decides by itself (``isatty``) whether stderr is a
terminal. On a pty the bar shows images done, images/s and the ETA; with
stderr a pipe, or with ``--quiet``, nothing of it appears.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..helpers import ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

SAMPLES = ROOT / "assets" / "samples"
IMAGES = 3
TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def three_samples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    for sample in sorted(SAMPLES.glob("*.png"))[:IMAGES]:
        (folder / sample.name).write_bytes(sample.read_bytes())
    return folder


def _command(folder: Path, out: Path, *extra: str) -> list[str]:
    # Two methods and batches of one: several updates, so the bar moves between its first and last drawing.
    return [sys.executable, "-m", "camkit", "overlay", str(folder), "-o", str(out), "--method", "gradcam,scorecam",
            "--batch-size", "1", "--workers", "0", "--threads", "1", *extra]


def _run_on_a_terminal(command: list[str], columns: int = 100) -> tuple[int, str]:
    """Run ``command`` with stderr (only) on a new pty ``columns`` wide (0: a size nobody set, as ``openpty``
    leaves it); what the terminal received, and the exit status."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    if columns:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=terminal, env={**os.environ, "TERM": "xterm"})
    os.close(terminal)  # the child holds its own copy; reading ends with EIO once it exits
    received = bytearray()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None:
                break
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    return status, received.decode("utf-8", errors="replace")


@pytest.mark.parametrize("columns", [100, 0], ids=["sized", "unsized"])
def test_a_terminal_shows_images_done_rate_and_eta(three_samples, tmp_path, columns) -> None:
    status, shown = _run_on_a_terminal(_command(three_samples, tmp_path / "out"), columns)
    assert status == 0, shown
    assert "camkit overlay:" in shown, shown
    assert re.search(rf"{IMAGES}\.0/{IMAGES} img", shown), shown  # images done, all of them at the end
    assert re.search(r"\d+(\.\d+)?(img/s|s/img)", shown), shown  # the rate
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", shown), shown  # elapsed < remaining: the ETA
    assert "\r" in shown  # redrawn in place, as a terminal bar is
    assert "overlays written" in shown  # the closing line follows the bar
    widest = max(len(line) for line in re.split(r"[\r\n]+", shown) if "camkit overlay:" in line)
    assert widest <= (columns or 80), shown  # fits the terminal; 80 columns where it reports no width


def test_quiet_on_a_terminal_shows_no_bar(three_samples, tmp_path) -> None:
    status, shown = _run_on_a_terminal(_command(three_samples, tmp_path / "out", "--quiet"))
    assert status == 0, shown
    assert "img" not in shown and "camkit overlay:" not in shown, shown


def test_stderr_not_a_terminal_shows_no_bar_but_the_closing_line(three_samples, tmp_path) -> None:
    process = subprocess.run(_command(three_samples, tmp_path / "out"), cwd=ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT_SECONDS)
    assert process.returncode == 0, process.stderr
    assert "img/s" not in process.stderr and "camkit overlay:" not in process.stderr, process.stderr
    assert "overlays written" in process.stderr
