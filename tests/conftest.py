"""Shared fixtures: small random-init models, seeded, nothing downloaded."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        for module in model.modules()
    )
