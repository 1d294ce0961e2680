"""Weighting: turns {task: loss} into gradients on the parameters. The only place that calls backward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Weighting(nn.Module):
    """Base class. A subclass may own parameters (learned weights); they are optimised with the model.

    needs_shared: the trainer passes the shared representation (`model(..., return_shared=True)`) to
    `backward`, for methods that work on gradients with respect to it.
    """

    needs_shared = False

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

    def current_weights(self) -> torch.Tensor:
        """The per-task weights of the last step, as a [num_tasks] tensor on the device (no host sync).

        The trainer averages them over each epoch and logs them as `<task>/weight`.
        """
        raise NotImplementedError

    def on_epoch_end(self, train_losses: dict[str, float]) -> None:
        """Mean training loss per task of the epoch that ended (loss-history methods such as DWA use it)."""
