"""How many intra-op CPU threads a process uses (`trainer.threads`).

Why not torch's default (one thread per core in every process): under torchrun each of the N ranks on a
host would take every core, and on a busy 2-core machine two threads per process ran 10-25x slower than
one. Auto gives each local process its share of the cores this process may run on.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("mtlrun")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def thread_policy(setting: int | None, env=None) -> tuple[int, str]:
    """(threads, why) for `trainer.threads`: an int >= 1 as given; null: OMP_NUM_THREADS when set (torch
    already read it), else max(1, usable cores // LOCAL_WORLD_SIZE) (torchrun sets it; 1 otherwise)."""
    env = os.environ if env is None else env
    if setting is not None:
        return int(setting), "trainer.threads"
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp, f"OMP_NUM_THREADS={omp}"
    cores, local = usable_cores(), _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    plural = "es" if local > 1 else ""
    return max(1, cores // local), f"auto: {cores} cores / {local} local process{plural}"


def apply_threads(setting: int | None) -> int:
    """Set torch's intra-op threads once, before the model is built, and log why."""
    threads, why = thread_policy(setting)
    torch.set_num_threads(threads)
    log.info(f"threads: {threads} ({why})")
    return threads
