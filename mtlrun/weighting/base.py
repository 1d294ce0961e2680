"""Weighting: turns {task: loss} into gradients on the parameters. The only place that calls backward.

One file per method, named as its YAML (configs/weighting/upgrad.yaml -> upgrad.py), on one of two bases:
- loss level (static, uw, dwa, gradnorm, rlw, gls, imtl_l, famo): one backward of a scalar objective
  built from the losses (`LossWeighting` in loss_base.py; static and GradNorm subclass `Weighting`);
- gradient level (mgda, pcgrad, upgrad, ...): per-task gradients, combined by a torchjd aggregator
  (`GradientAggregation` in gradient_base.py), with respect to the shared parameters or the shared
  representation (`grad_on`).

Partial labels: a task without any labelled sample in the batch has a loss of exactly 0 (see tasks.py).
Every weighting treats such a task as absent for that step: it gets no gradient, moves no learned state,
and produces no NaN.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun import distributed

GRAD_ON = ("parameters", "representation")


class Weighting(nn.Module):
    """Base class. A subclass may own parameters (learned weights); they are optimised with the model.

    needs_shared: the trainer passes the shared representation (`model(..., return_shared=True)`) to
    `backward`, for methods that work on gradients with respect to it.
    multi_backward: `backward` differentiates the graph more than once (per-task gradients). Under DDP
    the trainer then runs the step under `no_sync()` and averages the gradients itself, since
    DistributedDataParallel's reducer expects exactly one backward per forward.
    """

    needs_shared = False
    multi_backward = False
    grad_on_levels: tuple[str, ...] = ()  # the `grad_on` values the method takes (none: loss-level)
    # Where the trainer is in an accumulation window (`trainer.accumulate` micro-batches per optimizer step).
    # The class defaults make a `backward` called outside the trainer a whole step on its own.
    first_micro_batch = True
    last_micro_batch = True
    # The per-task weights are known only at the window's end (`end_window`): the trainer logs them there.
    weights_at_window_end = False

    def setup(self, tasks: dict, model: nn.Module) -> None:
        """Called once before training with the built tasks and the (unwrapped) model."""
        self.task_names = list(tasks)

    def backward(self, losses: dict[str, torch.Tensor], *, scale: Callable[[torch.Tensor], torch.Tensor],
                 shared: torch.Tensor | None = None, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Put this step's gradients into `.grad` (accumulating) and return the objective, detached.

        Every tensor that is backpropagated must first go through `scale` (gradient accumulation and the
        fp16 loss scale). `extra` is a regulariser from the model (or None) that belongs to the objective.
        """
        raise NotImplementedError

    @classmethod
    def accumulation_problem(cls, grad_on=None) -> str | None:
        """Why `trainer.accumulate>1` would NOT give this method the step of one batch that many times larger
        (checked at config time; None: it does). A method whose step is linear in each micro-batch's losses
        with weights fixed over the window (static, uw, ...) accumulates exactly as it is."""
        return None

    def start_micro_batch(self, first: bool, last: bool) -> None:
        """Called by the trainer before each micro-batch: whether it opens / closes the accumulation window."""
        self.first_micro_batch, self.last_micro_batch = first, last

    def end_window(self) -> None:
        """Called by the trainer once per optimizer step, after the window's last micro-batch (trained or
        skipped) and before the gradients are averaged over DDP ranks: a method that gathers the whole
        window before it can weight (gradient level) puts its gradients into `.grad` here at the latest."""

    def current_weights(self) -> torch.Tensor:
        """The per-task weights of the last step, as a [num_tasks] tensor on the device (no host sync).

        The trainer averages them over each epoch and logs them as `<task>/weight`.
        """
        raise NotImplementedError

    def on_epoch_end(self, train_losses: dict[str, float]) -> None:
        """Mean training loss per task of the epoch that ended (loss-history methods such as DWA use it)."""

    @classmethod
    def method_name(cls) -> str:
        """The name messages give the method, as in `weighting=upgrad`: that of the module defining the
        class, which is that of its YAML (one file per method). The one place the name is derived."""
        return cls.__module__.rpartition(".")[2]

    def refuse_grad_on(self, grad_on) -> None:
        """Loss-level methods backpropagate one weighted loss: `weighting.grad_on` has no meaning for them."""
        if grad_on is not None:
            raise UsageError(f"weighting.grad_on={grad_on}: weighting={self.method_name()} is loss-level (one "
                             f"backward of a weighted sum of the losses) and takes no grad_on; it applies to "
                             f"gradnorm and to the gradient-level methods (mgda, pcgrad, upgrad, ...). Leave it null")

    def check_grad_on(self, grad_on, allowed: tuple[str, ...] | None = None) -> str:
        allowed = allowed or self.grad_on_levels
        if grad_on not in allowed:
            raise UsageError(f"weighting.grad_on={grad_on}: valid for weighting={self.method_name()}: "
                             f"{', '.join(allowed)}")
        return str(grad_on)


def method_classes() -> list[type[Weighting]]:
    """The methods of this package: the Weighting classes its modules define, one module per method, except the
    bases' modules (base.py, loss_base.py, gradient_base.py). Imports every module."""
    package = __name__.rpartition(".")[0]
    found = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name == "base" or info.name.endswith("_base"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        found += [c for c in vars(module).values()
                  if isinstance(c, type) and issubclass(c, Weighting) and c.__module__ == module.__name__]
    return found


def accumulates_exactly() -> str:
    """The methods `trainer.accumulate>1` is exact for (the step of one batch `accumulate` times larger), as their
    classes' `accumulation_problem` says: what a refusal offers instead."""
    loss_level, both, some = [], [], []
    for cls in sorted(method_classes(), key=lambda c: c.method_name()):
        levels = cls.grad_on_levels or (None,)
        exact = [g for g in levels if cls.accumulation_problem(g) is None]
        if not exact:
            continue
        if not cls.grad_on_levels:
            loss_level.append(cls.method_name())
        elif len(exact) == len(levels):
            both.append(cls.method_name())
        else:
            some.append(f"{cls.method_name()} (grad_on={', '.join(exact)})")
    return f"{', '.join(loss_level)}, and the gradient-level {', '.join(both)} (both grad_on), {', '.join(some)}"


def as_tensor_list(shared) -> list[torch.Tensor]:
    """The shared representation as a list: a model may return one tensor, a list/tuple of them, or None."""
    if shared is None:
        return []
    if isinstance(shared, torch.Tensor):
        return [shared]
    return [s for s in shared if isinstance(s, torch.Tensor)]


def accumulate_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    """param.grad += grad, as autograd would (creating it on first use)."""
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad.detach().clone() if grad.requires_grad else grad
    else:
        param.grad += grad


def architecture_name(model: nn.Module) -> str:
    return type(model).__name__


def global_losses(losses: torch.Tensor, labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP, each task's loss averaged over the ranks that have labels for it (the global batch's loss
    when the ranks' batches are alike), and whether any rank has them; the rank's own otherwise. Every rank
    then keeps the same state (FAMO's previous losses, GradNorm's initial losses), so a checkpoint, which
    rank 0 writes, holds every rank's state."""
    if distributed.world_size() <= 1:
        return losses, labelled
    stacked = torch.stack([torch.where(labelled, losses.float(), torch.zeros_like(losses.float())), labelled.float()])
    distributed.reduce_over_ranks_([stacked])
    return stacked[0] / stacked[1].clamp_min(1), stacked[1] > 0
