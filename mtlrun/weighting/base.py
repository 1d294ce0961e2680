"""Weighting: turns {task: loss} into gradients on the parameters. The only place that calls backward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Weighting(nn.Module):
    """Base class. A subclass may own parameters (learned weights); they are optimised with the model."""

    def setup(self, tasks: dict, model: nn.Module) -> None:
        """Called once before training with the built tasks and the (unwrapped) model."""
        self.task_names = list(tasks)

    def backward(self, losses: dict[str, torch.Tensor], backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """Compute gradients for this step; `backward(t)` scales `t` (AMP, accumulation) and backprops it.

        Returns the scalar objective that was minimised, detached.
        """
        raise NotImplementedError

    def current_weights(self) -> dict[str, float | torch.Tensor]:
        """The per-task weights of the last step, logged per epoch."""
        return {}
