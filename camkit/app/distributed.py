"""Running a folder command across processes and machines with torchrun (torch.distributed).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them camkit runs as a
single process. The collectives here are tiny (counts and barriers), so they
use the gloo backend whatever device the model runs on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start() -> Ranks:
    """Join the torchrun job if there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return ranks


def run_on_ranks(command: Callable[[Any, Ranks], int], args: Any) -> int:
    """Run a CLI command as this process's rank (a single process outside torchrun), then leave the job."""
    ranks = start()
    try:
        return command(args, ranks)
    finally:
        stop(ranks)


def device_for(ranks: Ranks, requested: str) -> str:
    """``auto`` becomes this rank's own GPU (``cuda:LOCAL_RANK``) when there is one."""
    if requested == "auto" and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return requested


def shard(items: list[Item], ranks: Ranks) -> list[Item]:
    """This rank's contiguous share of ``items``; shares differ in size by at most one."""
    base, extra = divmod(len(items), ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return items[start : start + base + (1 if ranks.rank < extra else 0)]


def total(value: float, ranks: Ranks) -> float:
    """The sum of ``value`` over all ranks."""
    if ranks.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def total_tensor(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise sum of ``value`` over all ranks (float64 on the CPU for the gloo backend)."""
    if ranks.world == 1:
        return value
    tensor = value.detach().double().cpu().contiguous()
    dist.all_reduce(tensor)
    return tensor.to(value.device)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def stop(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
