"""``camkit methods``: the registry's methods, with what they use and their papers.

``camkit methods --markdown`` prints README.md's method table; a test keeps
the README equal to it, so the registry is the one source of both.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..explainers import METHODS, gives_pixel_attributions
from ..explainers.base import Explainer


def register(commands: Any) -> None:
    """Add ``methods`` to an ``add_subparsers()`` object."""
    parser = commands.add_parser("methods", help="list the explanation methods and their papers")
    parser.add_argument("--markdown", action="store_true", help="print the table README.md shows")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(markdown_table() if args.markdown else plain_table())
    return 0


def plain_table() -> str:
    name_width = max(map(len, METHODS))
    class_width = max(len(cls.__name__) for cls in METHODS.values())
    return "\n".join(
        f"{name:<{name_width}}  {cls.__name__:<{class_width}}  {_uses(cls):<33}  {_gives(cls):<24}  {cls.paper}"
        for name, cls in METHODS.items()
    )


def markdown_table() -> str:
    rows = [
        "| name | class | uses gradients | depends on the class | gives | cost | what it computes | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, cls in METHODS.items():
        rows.append(
            f"| `{name}` | `{cls.__name__}` | {_yes(cls.uses_gradients)} | {_yes(cls.class_specific)} | "
            f"{_gives(cls)} | {_cost(cls)} | {_summary(cls)} | {_linked(cls.paper)} |"
        )
    return "\n".join(rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _gives(cls: type[Explainer]) -> str:
    # Pixel methods also return signed per-pixel attributions (Explanation.attributions), drawn as such.
    return "map + pixel attributions" if gives_pixel_attributions(cls) else "map"


def _cost(cls: type[Explainer]) -> str:
    cost = getattr(cls, "cost", None)
    if cost:  # a method that says its own cost (Integrated Gradients: a pass per step)
        return str(cost)
    if getattr(cls, "uses", None):
        return "a forward per channel (and sample)"
    return "forward + backward" if cls.uses_gradients else "forward"


def _uses(cls: type[Explainer]) -> str:
    # A method may name what it uses beyond one pass (the perturbation methods: forwards of perturbed copies).
    uses = getattr(cls, "uses", None) or ("gradients" if cls.uses_gradients else "activations only")
    return uses if cls.class_specific else f"{uses}, class-agnostic"


def _summary(cls: type[Explainer]) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0].rstrip(".") if cls.__doc__ else ""


def _linked(paper: str) -> str:
    # "(arXiv:1610.02391)" becomes a link to the abstract.
    return re.sub(r"arXiv:(\d{4}\.\d{4,5})", r"[arXiv:\1](https://arxiv.org/abs/\1)", paper)
