"""torchrun- and srun-aware helpers: one code path for a single process and for DDP (gloo on CPU, nccl on CUDA).

A process learns its place from torchrun (RANK / WORLD_SIZE / LOCAL_RANK, MASTER_ADDR / MASTER_PORT) or, when
`srun mtlrun train` starts it without torchrun, from SLURM (`adopt_slurm`): SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID, the master address from SLURM_LAUNCH_NODE_IPADDR or the first host of SLURM_JOB_NODELIST, the
port from MASTER_PORT or derived from SLURM_JOB_ID. MTLRUN_SLURM=0 turns the SLURM reading off.
"""

from __future__ import annotations

import os
import re
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
    """This process's place. Once it has joined the process group, the group's rank and `world_size()`;
    before that, what torchrun or srun announced (RANK/WORLD_SIZE/LOCAL_RANK, which `init_if_launched` joins);
    a single process otherwise."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), world_size(), local_rank)
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local_rank)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[07-09,12],cpu1` -> `gpu07`; `a,b` -> `a`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def adopt_slurm(env=os.environ) -> bool:
    """Under `srun` without torchrun (no RANK), take the rank and world size from SLURM's task variables and
    write them where torch.distributed (env://) and the rest of mtlrun read them. True when it did.

    SLURM sets SLURM_PROCID and SLURM_NTASKS in every task srun starts (SLURM_STEP_NUM_TASKS: the tasks of this
    step). An sbatch script itself also has them: start mtlrun there with `srun`, or set MTLRUN_SLURM=0."""
    if "RANK" in env or env.get("MTLRUN_SLURM", "1") == "0" or "SLURM_PROCID" not in env:
        return False
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if world < 2:
        return False
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], str(world)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "")
    if per_node:  # e.g. "4(x2)": 4 tasks on each of 2 nodes; the thread policy divides the cores by it
        env.setdefault("LOCAL_WORLD_SIZE", per_node.group())
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        env["MASTER_ADDR"] = env.get("SLURM_LAUNCH_NODE_IPADDR") or (first_host(nodes) if nodes else "127.0.0.1")
    if "MASTER_PORT" not in env:  # the same on every task of the job, and differs between jobs
        env["MASTER_PORT"] = str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return True


def init_if_launched() -> DistInfo:
    """Join the process group when started by torchrun or srun. Called before Hydra so ranks can agree on a
    run dir.

    CPU tensors always go through gloo; CUDA tensors through nccl where this build has it.
    """
    adopt_slurm()
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
    """How many processes train together: the size of the process group this process has joined (1 without
    one). The one source of the world size: `dist_info()` and every cross-rank mean read it."""
    return dist.get_world_size() if dist.is_initialized() else 1


REDUCTIONS = {"sum": "SUM", "mean": "SUM", "min": "MIN", "max": "MAX"}


def reduce_over_ranks_(tensors: list[torch.Tensor], how: str = "sum") -> list[torch.Tensor]:
    """Each tensor reduced in place over the ranks, and the list returned: "sum", "mean" (the sum divided by
    `world_size()`; floating tensors), "min" or "max". The tensors of one dtype and device go in one
    all-reduce, flattened together. Without a process group the tensors stay as they are."""
    if not dist.is_initialized() or not tensors:
        return tensors
    op = getattr(dist.ReduceOp, REDUCTIONS[how])
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = group[0] if len(group) == 1 and group[0].is_contiguous() else torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=op)
        if how == "mean":
            flat /= world_size()
        if flat is not group[0]:
            for t, reduced in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(reduced.view_as(t))
    return tensors


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
