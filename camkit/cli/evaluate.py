"""``camkit evaluate``: the flags; the work is :mod:`camkit.app.evaluation`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..app.evaluation import EvaluationJob, run
from .formatting import DeprecatedSpelling, HelpFormatter


def register(commands: Any) -> None:
    """Add ``evaluate`` to an ``add_subparsers()`` object."""
    parser = commands.add_parser(
        "evaluate",
        help="score methods with faithfulness, localisation and sanity metrics",
        description="Print a method x metric table (and write it as CSV, Markdown and a plot). Lower is better for "
        "localisation error, deletion, average drop, class sensitivity (1 = the map ignores the class), model "
        "randomisation (1 = the map ignores the weights), max sensitivity and complexity; higher for the rest. "
        "MaxBoxAccV2 and PxAP (percent) follow Choe et al., CVPR 2020.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="images/folders/globs (default: the demo set with boxes)"
    )
    parser.add_argument(
        "--boxes",
        type=Path,
        default=None,
        help="the images' boxes: a COCO .json, a folder of "
        "Pascal VOC .xml, or a .csv of file,x0,y0,x1,y1[,label] (x1/y1 exclusive)",
    )
    parser.add_argument(
        "--masks", type=Path, default=None, help="a folder with one mask image per image (same stem, non-zero = object)"
    )
    parser.add_argument(
        "--method",
        "--methods",
        default="all",
        action=DeprecatedSpelling,
        dest="methods",
        help="comma-separated method names, or 'all' (--methods, the old spelling, still works)",
    )
    parser.add_argument("--model", default=None, help="as for `camkit overlay` (default: the demo CNN)")
    parser.add_argument(
        "--weights", default=None, help="as for `camkit overlay`: a local weights file or a torchvision weight set name"
    )
    parser.add_argument("--layer", default=None, help="dotted target layer name (default: automatic)")
    parser.add_argument("--n-images", type=int, default=64, help="demo images to evaluate on")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model pass")
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here as Markdown")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="write a PNG: per-metric bars (one standard "
        "deviation over images) and box accuracy against the CAM threshold",
    )
    parser.add_argument(
        "--samples", type=int, default=2, help="noisy copies per image for the robustness columns (0 leaves them out)"
    )
    parser.add_argument(
        "--sigma", type=float, default=0.1, help="gradient noise, times each image's gradient standard deviation"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown only when stderr is a terminal)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="OUT",
        help="output folder: evaluation.csv/.md/.png, and the finished (image, method) scores in OUT/.evaluation, "
        "so a repeated or interrupted run into the same folder scores only what is missing",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write OUT/report.html with the evaluation section (extends the report `camkit overlay "
        "-o OUT --report` writes there, keeping its images)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return run(EvaluationJob(**{field.name: getattr(args, field.name) for field in dataclasses.fields(EvaluationJob)}))
