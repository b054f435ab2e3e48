"""The ``camkit`` command: one table (``camkit.METHODS``) drives its choices."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from . import __version__
from .explainers import METHODS

PAPERS = {
    "gradcam": "Selvaraju et al., ICCV 2017",
    "gradcam++": "Chattopadhay et al., WACV 2018",
    "smoothgradcam++": "Omeiza et al., arXiv 2019",
    "eigencam": "Muhammad & Yeasin, IJCNN 2020",
    "cfcam": "He, Pan & Yao, 2025",
}


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, no traceback."""


def _methods(_args: argparse.Namespace) -> int:
    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        uses = "gradients" if cls.uses_gradients else "activations only"
        print(f"{name:<{width}}  {cls.__name__:<24} {uses:<17} {PAPERS.get(name, '')}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    import torchvision

    from .layers import auto_layer, dry_run

    try:
        model = torchvision.models.get_model(args.model, weights=None)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:12])
        raise UserError(f"unknown torchvision model {args.model!r}; examples: {names}, ...") from None
    x = torch.zeros(1, 3, args.input_size, args.input_size)
    chosen, _ = auto_layer(model, x)
    rows = [info for info in dry_run(model, x) if info.layout is not None]
    width = max(len(info.name) for info in rows)
    print(f"{'layer':<{width}}  {'type':<22} output shape       layout")
    for info in rows:
        mark = "  <- automatic choice" if info.name == chosen else ""
        shape = "x".join(map(str, info.shape or ()))
        print(f"{info.name:<{width}}  {info.type:<22} {shape:<18} {info.layout}{mark}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camkit",
        description="Class activation maps for image models: Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, "
        "Eigen-CAM and CF-CAM, batched on the model's device.",
    )
    parser.add_argument("--version", action="version", version=f"camkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    methods = commands.add_parser("methods", help="list the explanation methods")
    methods.set_defaults(run=_methods)

    layers = commands.add_parser(
        "layers", help="list a torchvision model's candidate target layers with their output shapes"
    )
    layers.add_argument("model", help="torchvision model name, e.g. resnet50, vit_b_16, swin_t")
    layers.add_argument("--input-size", type=int, default=224, help="side of the square dry-run input (224)")
    layers.set_defaults(run=_layers)

    from . import evaluate, overlay

    overlay.register(commands)
    evaluate.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="camkit: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (UserError, ValueError, TypeError, OSError) as error:
        if args.debug:
            raise
        print(f"camkit: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
