"""The losses of a training batch that holds one batch per source (data=mixture with sampling=all).

Each source's batch goes through the model on its own (the sources' inputs may differ in shape or kind), and
each task's loss is taken on its own source's batch; a task that spans sources gets the mean of its losses.
The shared representation is the list of every source's: a parameter-level gradient method differentiates
through all of them (each task's gradient reaches the shared parameters through its own source's forward).
Representation-level methods are refused before training (Mixture.check_weighting): the sources' rows of that
representation are different samples, so the tasks' gradients there never meet.
"""

from __future__ import annotations

import torch

from mtlrun.weighting.base import as_tensor_list


def source_losses(compute_losses, batch: dict, task_names: list[str], need_shared: bool):
    """`compute_losses(part, need_shared) -> (losses, shared)` per source part of `batch` (Trainer.compute_losses)."""
    parts = [(part["tasks"], *compute_losses(part, need_shared)) for part in batch["sources"].values()]
    losses = {t: torch.stack([lo[t] for own, lo, _ in parts if t in own]).mean() for t in task_names}
    shared = [x for *_, sh in parts for x in as_tensor_list(sh)]
    return losses, shared or None
