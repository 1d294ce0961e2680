"""The model contract every sharing architecture implements (see DESIGN.md, data flow)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class MultiTaskModel(nn.Module):
    """Maps `inputs` ({modality: Tensor}) to {task: prediction}.

    Subclasses register task-specific modules under `self.heads[task]` (plus anything they list in
    `task_modules`), so gradient methods can tell shared parameters from task parameters, and return the
    shared representation from `forward(..., return_shared=True)` for representation-level methods.
    """

    heads: nn.ModuleDict

    def forward(self, inputs: dict[str, torch.Tensor], return_shared: bool = False):
        raise NotImplementedError

    def regularizer(self) -> torch.Tensor | None:
        """A penalty added to the training objective (e.g. soft sharing's parameter distance), or None."""
        return None

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        for module in self.task_modules(task):
            yield from module.parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        owned = {id(p) for task in self.heads for p in self.task_parameters(task)}
        return (p for p in self.parameters() if id(p) not in owned)
