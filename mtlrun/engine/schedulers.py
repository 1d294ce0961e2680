"""Learning-rate schedules, stepped once per optimizer step.

Each is `factory(optimizer, total_steps, warmup_steps=0, ...) -> LRScheduler`; the `scheduler` config group
points at one with `_partial_: true` and the trainer supplies `total_steps`, so any callable of that shape
plugs in. All of them share the same linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim.lr_scheduler import LambdaLR


def _warmed_up(optimizer, warmup_steps: int, after: Callable[[int], float]) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then `after(steps since warm-up)`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return after(step - warmup_steps)

    return LambdaLR(optimizer, factor)


def constant(optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    return _warmed_up(optimizer, warmup_steps, lambda step: 1.0)


def cosine(optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Cosine decay from the base LR to `min_lr_ratio` x base LR at the end of training."""
    decay_steps = max(1, total_steps - warmup_steps)

    def after(step: int) -> float:
        progress = min(1.0, step / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _warmed_up(optimizer, warmup_steps, after)


def multistep(optimizer, total_steps: int, warmup_steps: int = 0, milestones=(0.5, 0.75),
              gamma: float = 0.1) -> LambdaLR:
    """Multiply the LR by `gamma` at each milestone, given as a fraction of training."""
    bounds = sorted(int(m * total_steps) for m in milestones)
    return _warmed_up(optimizer, warmup_steps,
                      lambda step: gamma ** sum(step + warmup_steps >= b for b in bounds))
