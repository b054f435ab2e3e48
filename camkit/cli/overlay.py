"""``camkit overlay``: the flags; the work is :mod:`camkit.app.runner`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..app.runner import OverlayJob, run
from ..explainers import METHODS
from .formatting import DeprecatedSpelling, HelpFormatter


def register(commands: Any) -> None:
    """Add ``overlay`` to an ``add_subparsers()`` object."""
    parser = commands.add_parser(
        "overlay",
        help="write heatmap overlays for image files, folders or globs",
        description="Explain every image with one or more methods and write overlays at each image's own size. "
        "The output tree mirrors the input tree; OUT/manifest.csv lists every image, method and outcome.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or globs; "
        "3-D volumes (.npy, .nii/.nii.gz with nibabel) become montages of their middle slices",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
    parser.add_argument(
        "--method",
        "--methods",
        default="gradcam",
        action=DeprecatedSpelling,
        dest="method",
        help=f"one of {', '.join(METHODS)}; several comma-separated; or 'all' (the registry's "
        "methods); --methods is a deprecated spelling",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="torchvision name, timm name (timm:NAME where torchvision has "
        "the same name), a torch.export .pt2 file, or package.module:factory (default: the bundled "
        "demo CNN)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="local state-dict/checkpoint file (the only kind for a timm "
        "model: camkit never downloads those), a torchvision weight set name such as IMAGENET1K_V1, "
        "or 'none' (random weights, to try the tool offline). Default: the demo's own weights; for a "
        "torchvision model its DEFAULT ImageNet set, which torchvision downloads once",
    )
    parser.add_argument(
        "--class-names",
        default=None,
        metavar="FILE",
        help="the model's class names: one per line, "
        "or JSON (a list, or index -> name); for --target NAME and the manifest's predicted_name "
        "(a local checkpoint carries none)",
    )
    parser.add_argument("--layer", default=None, help="dotted target layer name (default: automatic)")
    parser.add_argument(
        "--target",
        default="top1",
        help="'top1' (each image's predicted class; for a segmenter the "
        "non-background class covering most pixels) or a class index or name",
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="side the images are resized to (default: the model's)"
    )
    parser.add_argument(
        "--normalize", default=None, help="'imagenet', 'none', or 'm1,m2,m3:s1,s2,s3' (default: the model's)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    parser.add_argument("--colormap", default="jet", help="any matplotlib colormap name")
    parser.add_argument("--save-maps", choices=("npy", "png16"), default=None, help="also write raw maps at image size")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model pass")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (0: in-process; default: a quarter of the usable cores from 4 cores on, else 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the model (default: "
        "CAMKIT_THREADS, else OMP_NUM_THREADS, else the usable cores the workers leave)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples drawn by sscam, iscam and smoothgradcam++, scales of sess "
        "(default: each method's own, 35, 10, 8 and 12); fewer is proportionally faster",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-caption",
        dest="caption",
        action="store_false",
        help="overlays without the strip below "
        "them that names the method, the explained class and its probability, with a colour bar "
        "(default: captions on)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write OUT/report.html: every image and method "
        "of the manifest in one page, filtered by class and sorted by score (static, works offline)",
    )
    parser.add_argument(
        "--label-from-folder",
        action="store_true",
        help="with --report: each image's folder name "
        "is its label (a class name or index), and the report can show where the prediction differs",
    )
    detectors = parser.add_argument_group(
        "detectors",
        "a torchvision detector (with --weights), an ultralytics YOLO (yolov8n.pt, yolo11n.yaml; "
        "pip install 'camkit[yolo]') or a factory returning a Hugging Face *ForObjectDetection is explained "
        "detection by detection: manifest.csv has a row per detection with its box, label, label name and score. An "
        "ultralytics .pt file is unpickled by ultralytics' own loader, which can run code: load only files you trust "
        "(camkit's own --weights files are read with weights_only=True)",
    )
    detectors.add_argument("--score-threshold", type=float, default=0.25, help="explain detections scoring above this")
    detectors.add_argument("--max-detections", type=int, default=20, help="at most this many per image, best first")
    detectors.add_argument(
        "--detection-score",
        choices=("box", "mask"),
        default="box",
        help="the score each map explains: the detection's (box) or, for Mask R-CNN and YOLO-seg, its mask's "
        "(the mean mask probability over its own mask); detections are chosen by their box score either way",
    )
    detectors.add_argument(
        "--per-detection",
        action="store_true",
        help="also one overlay file per detection (NAME_METHOD_detNN.png) beside the image's overlay of all its boxes",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return run(OverlayJob(**{field.name: getattr(args, field.name) for field in dataclasses.fields(OverlayJob)}))
