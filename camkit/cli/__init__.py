"""The ``camkit`` command: argparse only, one module per command.

This is the one place that turns a :class:`camkit.CamkitError` into a
one-line message and an exit code. Exit codes: 0 everything written, 1 some
inputs failed (each reported), 2 bad usage (nothing was written), 130 Ctrl-C
(one line; what finished is kept). Any other exception is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="camkit: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return args.run(args)
    except CamkitError as error:
        if args.debug:
            raise
        print(f"camkit: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        where = getattr(args, "output", None)
        report = " and report.html" if getattr(args, "report", False) else ""
        saved = f"; what finished is in {where}/manifest.csv{report}, and rerunning the command resumes" if where else ""
        print(f"camkit: interrupted{saved}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
