"""Non-finite values: where the trainer looks for NaN/inf, and what every DDP rank must agree on.

Each check is one reduction on the device and one host sync; the trainer calls them only where a user opted
in (`trainer.skip_nonfinite`), at log steps, and before a checkpoint is written.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtlrun import distributed
from mtlrun.engine.evaluate import missing_tasks
from mtlrun.errors import NonFiniteLossError


def all_finite(values: torch.Tensor, dist: distributed.DistInfo) -> bool:
    """Whether every value is finite on every rank (all ranks must take the same decision, or the next
    DDP all-reduce hangs)."""
    finite = torch.isfinite(values).all().to(torch.int32)
    if dist.enabled:
        distributed.reduce_over_ranks_([finite], "min")
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


def check_outputs_finite(val: dict[str, float], tasks, epoch: int, last_good) -> None:
    """With skip_nonfinite a skipped step leaves the weights as they were: finite, but after a step that blew
    them up (a huge lr) they may give NaN/inf on every batch, so every later step is skipped and the run
    would end with a model that predicts nothing. A task whose val loss is not finite although val had
    something to measure for it (its metrics are not all NaN) shows that: the run stops, nothing saved."""
    broken = [t for t in tasks if not math.isfinite(val.get(f"{t}/loss", 0.0)) and t not in missing_tasks(val, [t])]
    if broken:
        kept = f"{last_good} is the last good checkpoint" if last_good else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"after epoch {epoch} the model gives a non-finite val loss for task '{broken[0]}' (its weights are "
            f"finite; the steps that would have made them NaN were skipped): nothing was saved, {kept}. Try a "
            f"lower optim.lr or trainer.grad_clip=1.0")


def first_nonfinite_step(first: torch.Tensor, dist: distributed.DistInfo) -> torch.Tensor:
    """Per task, the earliest step with a non-finite loss on any rank (-1: none)."""
    if not dist.enabled:
        return first
    never = torch.iinfo(torch.long).max  # -1 (none) must not win the MIN
    first = torch.where(first < 0, never, first)
    distributed.reduce_over_ranks_([first], "min")
    return torch.where(first == never, -1, first)


class BufferGuard:
    """The model's buffers (BatchNorm's running statistics and batch count, ...) as they were before the step,
    so that a step skipped for a non-finite loss or gradient (`trainer.skip_nonfinite`) leaves the model
    exactly as it was: the forward that found the NaN has already folded its batch into them, and one NaN in
    a running variance would poison every later evaluation. Saving is one fused device copy into tensors
    allocated once (no allocation, no host sync); restoring happens only for a skipped step, whose skip
    already read the decision back. Buffers are updated in place, as torch's own modules do."""

    def __init__(self, module: nn.Module, accumulate: int):
        self.buffers = list(module.buffers())
        self.step_start = [b.clone() for b in self.buffers]
        # a skipped optimizer step discards the whole accumulation window: its first micro-batch's copy
        self.window_start = self.step_start if accumulate == 1 else [b.clone() for b in self.buffers]

    def save(self, window_starts: bool) -> None:
        if self.buffers:
            torch._foreach_copy_(self.step_start, self.buffers)
            if window_starts and self.window_start is not self.step_start:
                torch._foreach_copy_(self.window_start, self.buffers)

    def restore_step(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.step_start)

    def restore_window(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.window_start)
