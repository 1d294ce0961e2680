"""The model contract every sharing architecture implements (see docs/architecture.md, data flow)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn


class MultiModalInput(NamedTuple):
    """What a model with several modalities hands its encoder (a FusedEncoder): inputs and modality mask."""

    inputs: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor] | None  # {modality: BoolTensor[B]}; a modality not in it is present


class MultiTaskModel(nn.Module):
    """Maps `inputs` ({modality: Tensor}) to {task: prediction}.

    Subclasses register task-specific modules under `self.heads[task]` (plus anything they list in
    `task_modules`), so gradient methods can tell shared parameters from task parameters, and return the
    shared representation from `forward(..., return_shared=True)` for representation-level methods.

    `shared` (a tensor or a list of tensors) is what all task-specific computation reads: each task's loss
    depends on `shared_parameters()` only through it, so the gradient of a task loss with respect to the
    shared parameters is the gradient with respect to `shared`, backpropagated through `shared`.
    `task_parameters(t)` are the parameters only task t uses; those of different tasks are disjoint.
    """

    heads: nn.ModuleDict
    # False where no representation is shared (soft sharing): `forward(..., return_shared=True)` returns
    # None for it and representation-level gradient methods cannot be used.
    has_shared_representation = True

    # the input the encoder reads: one modality's tensor, or None for every modality through a
    # FusedEncoder (which then gets a MultiModalInput: the inputs and the modality mask)
    modality: str | None

    def forward(self, inputs: dict[str, torch.Tensor], return_shared: bool = False,
                modality_mask: dict[str, torch.Tensor] | None = None):
        raise NotImplementedError

    def encoder_input(self, inputs: dict[str, torch.Tensor], modality_mask: dict[str, torch.Tensor] | None):
        if self.modality is not None:
            return inputs[self.modality]
        return MultiModalInput(inputs, modality_mask)

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
