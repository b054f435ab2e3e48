"""``camkit layers``: a model's candidate target layers, their output shapes and the automatic choice."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..app.models import input_channels, model_for_listing
from ..errors import CamkitError
from ..layers import LayerInfo, auto_layer, dry_run
from ..layouts import Layout, patch_size_of, prefix_tokens_of, token_layout


def register(commands: Any) -> None:
    """Add ``layers`` to an ``add_subparsers()`` object."""
    parser = commands.add_parser("layers", help="list a model's candidate target layers with their output shapes")
    parser.add_argument(
        "model",
        nargs="?",
        default="demo",
        help="a torchvision name (resnet50, vit_b_16, swin_t), a timm name (levit_128s, convnext_atto; "
        "timm:NAME where torchvision has the same name), 'demo' (the bundled CNN, the default), a "
        "torch.export .pt2 file, or package.module:factory; no weights are downloaded",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="side of the square dry-run input (default: the model's own, 224 for torchvision; "
        "timm's from its configuration; a timm ViT is built for this size)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size < 1:
        raise CamkitError(f"--input-size must be a positive number of pixels, got {args.input_size}")
    model, size = model_for_listing(args.model, args.input_size)
    if args.input_size is not None:
        size = (args.input_size,) * len(size)
    channels = 3 if len(size) == 2 else (input_channels(model) or 1)
    x = torch.zeros(1, channels, *size)
    try:
        chosen, _ = auto_layer(model, x)
        rows = [info for info in dry_run(model, x) if info.layout is not None]
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise CamkitError(
            f"{args.model} cannot run on a {channels}x{'x'.join(map(str, size))} input ({first}); "
            "try another --input-size"
        ) from None
    width = max(len(info.name) for info in rows)
    patch_size, prefix_tokens = patch_size_of(model), prefix_tokens_of(model)
    print(f"{'layer':<{width}}  {'type':<22} output shape       layout")
    for info in rows:
        mark = "  <- automatic choice" if info.name == chosen else ""
        shape = "x".join(map(str, info.shape or ()))
        layout = _layout_text(info, tuple(size), patch_size, prefix_tokens)
        print(f"{info.name:<{width}}  {info.type:<22} {shape:<18} {layout}{mark}")
    return 0


def _layout_text(info: LayerInfo, size: tuple[int, ...], patch_size: tuple[int, int] | None, prefix_tokens: int) -> str:
    """The layout, and for tokens the grid camkit lays them on: ``tokens 1+14x14`` (special tokens + grid)."""
    if info.layout is not Layout.TOKENS or not info.shape:
        return str(info.layout)
    found = token_layout(info.shape[1], size, patch_size, prefix_tokens)
    if found is None:
        return "tokens (no grid: pass reshape=)"
    return f"tokens {found[0]}+{found[1]}x{found[2]}" if found[0] else f"tokens {found[1]}x{found[2]}"
