"""Learning-rate schedules, stepped once per optimizer step.

Each is `factory(optimizer, total_steps, ...) -> LRScheduler`; the `scheduler` config group points at one
with `_partial_: true` and the trainer supplies `total_steps`, so any callable of that shape plugs in.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def constant(optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def cosine(optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then cosine decay from the base LR to `min_lr_ratio` x base LR at the end of training."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def multistep(optimizer, total_steps: int, milestones=(0.5, 0.75), gamma: float = 0.1) -> LambdaLR:
    """Multiply the LR by `gamma` at each milestone, given as a fraction of training."""
    bounds = sorted(int(m * total_steps) for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= b for b in bounds))
