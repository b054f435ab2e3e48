"""Points and weights on [0, 1] for integrating along a path (Integrated Gradients' steps)."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import CamkitError

Rule = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
RULES: tuple[str, ...] = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def path_points(steps: int, rule: Rule = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)``, float64, such that sum_s weights_s f(alphas_s) approximates the integral of f over [0, 1].

    The rules and their weights are captum's: Gauss-Legendre nodes mapped
    from [-1, 1] (by the Golub-Welsch eigenvalue method, exact to float64
    rounding), and Riemann sums of ``1 / steps`` wide steps, the trapezoid's
    two end steps halved.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise CamkitError(f"steps must be an int of at least 2, got {steps!r}.")
    if rule == "gausslegendre":
        k = torch.arange(1, steps, dtype=torch.float64)
        off_diagonal = k / torch.sqrt(4 * k * k - 1)
        jacobi = torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1)
        nodes, vectors = torch.linalg.eigh(jacobi)
        return 0.5 * (1 + nodes), vectors[0] ** 2  # weights 2 v0^2 on [-1, 1], halved on [0, 1]
    weights = torch.full((steps,), 1 / steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    starts = {
        "riemann_left": (0.0, 1 - 1 / steps),
        "riemann_right": (1 / steps, 1.0),
        "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
    }
    if rule not in starts:
        raise CamkitError(f"rule must be one of {', '.join(RULES)}, got {rule!r}.")
    low, high = starts[rule]
    return torch.linspace(low, high, steps, dtype=torch.float64), weights


__all__ = ["RULES", "Rule", "path_points"]
