"""Multi-process data-parallel training under ``torchrun``: process group, data shards, metric averaging.

Semantics: ``train.batch_size`` is the global batch. Every process draws the same permutation each epoch
and takes its own contiguous slice of each global batch (batch_size / W examples); DistributedDataParallel
averages the gradients, with each slice's loss weighted by its share of the batch, so a step is a step on
the mean loss over the global batch, exactly the batches of a one-process run, and the learning rate means
what it means there. Each process keeps the training set on its device: the data sets vaekit trains on fit
a device, and sharing one permutation is what makes a W-process run the same computation as a one-process
run. Only rank 0 validates, logs, writes metrics and checkpoints.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the run; a single-process run is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as ``torchrun`` sets it in the environment, before the group is joined (0 alone)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def from_env(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", rank, world, device)
    return Context(rank, world, owns), device


def rank_slice(n: int, ctx: Context) -> tuple[int, int]:
    """This process's part [a, b) of a global batch of n examples; parts differ in size by at most one."""
    return n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size


def wrap(model: nn.Module, ctx: Context, device: torch.device) -> Callable:
    """The forward used for training: the model itself, or its DistributedDataParallel wrapper."""
    if ctx.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def mean_over_ranks(t: Tensor, ctx: Context) -> Tensor:
    """Average of ``t`` across processes (``t`` itself in a single-process run)."""
    if ctx.world_size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / ctx.world_size


def any_rank(flag: bool, ctx: Context, device: torch.device) -> bool:
    """True in every process when ``flag`` is true in any one (e.g. a stop asked for on rank 0)."""
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def leave_together(ctx: Context) -> None:
    """Wait until every process is done: one that closes its connections while a peer still writes its
    checkpoint can make gloo abort that peer's process at exit."""
    if ctx.world_size > 1:
        dist.barrier()


def close(ctx: Context) -> None:
    """Destroy the process group this run created. Anything still holding gloo work (a DDP wrapper in a reference
    cycle) is collected first: freed later, during interpreter shutdown, it aborts the process (SIGABRT,
    "terminate called without an active exception") after training has succeeded."""
    if ctx.world_size > 1:
        gc.collect()
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
