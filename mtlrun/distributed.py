"""torchrun-aware helpers: one code path for a single process and for DDP (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """What torchrun told this process (RANK/WORLD_SIZE/LOCAL_RANK); a single process otherwise."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_if_launched() -> DistInfo:
    """Join the process group when started by torchrun. Called before Hydra so ranks can agree on a run dir.

    CPU tensors always go through gloo; CUDA tensors through nccl where this build has it.
    """
    info = dist_info()
    if info.enabled and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return info


def broadcast_object(obj):
    """rank 0's `obj` on every rank (identity without DDP)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def world_size() -> int:
    """How many processes train together (1 without DDP)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_(tensors: list[torch.Tensor], op=None) -> None:
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
