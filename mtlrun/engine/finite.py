"""Non-finite values: where the trainer looks for NaN/inf, and what every DDP rank must agree on.

Each check is one reduction on the device and one host sync; the trainer calls them only where a user opted
in (`trainer.skip_nonfinite`), at log steps, and before a checkpoint is written.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun import distributed


def all_finite(values: torch.Tensor, dist: distributed.DistInfo) -> bool:
    """Whether every value is finite on every rank (all ranks must take the same decision, or the next
    DDP all-reduce hangs)."""
    finite = torch.isfinite(values).all().to(torch.int32)
    if dist.enabled:
        distributed.all_reduce_([finite], op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def grads_finite(optimizer: torch.optim.Optimizer, dist: distributed.DistInfo) -> bool:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return True
    return all_finite(torch.stack([torch.isfinite(g).all() for g in grads]), dist)


def nonfinite_tensors(*modules: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or inf. DDP keeps the weights identical
    on every rank, so every rank reaches the same answer without communicating."""
    named = [(n, t) for module in modules
             for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]


def first_nonfinite_step(first: torch.Tensor, dist: distributed.DistInfo) -> torch.Tensor:
    """Per task, the earliest step with a non-finite loss on any rank (-1: none)."""
    if not dist.enabled:
        return first
    never = torch.iinfo(torch.long).max  # -1 (none) must not win the MIN
    first = torch.where(first < 0, never, first)
    distributed.all_reduce_([first], op=torch.distributed.ReduceOp.MIN)
    return torch.where(first == never, -1, first)
