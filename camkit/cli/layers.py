"""``camkit layers``: a torchvision model's candidate target layers, their output shapes and the automatic choice."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from ..errors import CamkitError
from ..layers import auto_layer, dry_run


def register(commands: Any) -> None:
    """Add ``layers`` to an ``add_subparsers()`` object."""
    parser = commands.add_parser(
        "layers", help="list a torchvision model's candidate target layers with their output shapes"
    )
    parser.add_argument("model", help="torchvision model name, e.g. resnet50, vit_b_16, swin_t")
    parser.add_argument("--input-size", type=int, default=224, help="side of the square dry-run input (224)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torchvision

    try:
        model = torchvision.models.get_model(args.model, weights=None)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:12])
        raise CamkitError(f"unknown torchvision model {args.model!r}; examples: {names}, ...") from None
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
