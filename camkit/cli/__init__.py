"""The ``camkit`` command: argparse only, one module per command.

This is the one place that turns a :class:`camkit.CamkitError` into a
one-line message and an exit code. Exit codes: 0 everything written, 1 some
inputs failed (each reported), 2 bad usage (nothing was written), 130 Ctrl-C
(one line; what finished is kept). Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ..errors import CamkitError
from ..explainers import METHODS
from . import evaluate, layers, methods, overlay

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _version() -> str:
    try:
        return version("camkit")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camkit",
        description=f"Class activation maps for image models ({', '.join(METHODS)}), batched on the model's device.",
    )
    parser.add_argument("--version", action="version", version=f"camkit {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (methods, layers, overlay, evaluate):
        command.register(commands)
    return parser


def _interrupt_once(_signal: int, _frame: object) -> None:
    """The first Ctrl-C stops the run; later ones are ignored until its clean-up (the manifest's last rows,
    the decoding workers' shutdown) is done, so that they cannot cut it short or print its tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="camkit: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return USAGE_ERROR
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, _interrupt_once) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args))
    except CamkitError as error:
        if args.debug:
            raise
        print(f"camkit: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
    # Only an interrupt gets here. Outside the handler the interrupted frames are gone: collecting them shuts
    # the decoding workers down while a second Ctrl-C is still ignored.
    gc.collect()
    where = getattr(args, "output", None)
    report = " and report.html" if getattr(args, "report", False) else ""
    kept = ".evaluation" if getattr(args, "command", None) == "evaluate" else "manifest.csv"  # evaluate's store
    saved = f"; what finished is in {where}/{kept}{report}, and rerunning the command resumes" if where else ""
    print(f"camkit: interrupted{saved}", file=sys.stderr)
    return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
