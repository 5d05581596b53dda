"""Data-parallel runs on PyTorch's own engine: torchrun, DistributedDataParallel, gloo or NCCL.

    torchrun --nproc-per-node 2 -m replearn train mnist-cnn     # what `replearn train --nproc 2` runs

`torchrun` starts one process per rank with RANK, LOCAL_RANK and WORLD_SIZE in the environment;
`init_from_environment` joins them into a process group (gloo on the CPU, NCCL on CUDA). The
Trainer then wraps the model in DistributedDataParallel, gives each rank its slice of every batch,
and logs and checkpoints on rank 0 only. A single process (no WORLD_SIZE) needs none of this.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "all_gather_objects", "init_from_environment", "is_main_process", "rank", "shutdown", "world_size"]


def world_size() -> int:
    """Processes in the run (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process logs, prints and writes checkpoints."""
    return rank() == 0


def init_from_environment(device: torch.device) -> bool:
    """Joins the process group torchrun describes in the environment; returns whether it is distributed.

    Does nothing when WORLD_SIZE is unset or 1, or when a group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dist.is_available() and dist.is_initialized()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over every rank in place (a no-op in one process) and returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: object) -> list[object]:
    """`value` of every rank, in rank order ([value] in one process)."""
    if world_size() == 1:
        return [value]
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown() -> None:
    """Leaves the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
