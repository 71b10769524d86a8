"""Data-parallel training of one run under ``torchrun``: process group, rank checks, metric reduction.

``torchrun --nproc_per_node=N -m xgrad.run ...`` starts N copies of the runner; each trains on its shard of every
batch, DistributedDataParallel averages the gradients, so every rank holds the same weights and optimizer state
and therefore makes the same weight prediction. Only rank 0 writes files and talks to trackers.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedContext", "all_reduce_sum", "barrier", "setup_distributed"]


class DistributedContext:
    """Rank, world size and local rank of this process (a single process is rank 0 of 1)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owns_group: bool = False) -> None:
        self.rank, self.world_size, self.local_rank, self.owns_group = rank, world_size, local_rank, owns_group

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains this run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0

    def close(self) -> None:
        """Tear down the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        owns = True
    return DistributedContext(rank, world_size, local_rank, owns)


def all_reduce_sum(
    stats: dict[str, Tensor | int], ctx: DistributedContext, device: torch.device
) -> dict[str, Tensor | int]:
    """Sum each statistic over ranks (a no-op for a single process); Python numbers travel via ``device``."""
    if not ctx.enabled:
        return stats
    out = {}
    for key, value in stats.items():
        value = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(value, device=device)
        dist.all_reduce(value)
        out[key] = value
    return out


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()
