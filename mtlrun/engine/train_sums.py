"""The epoch's train row (metrics.csv) as running sums on the device, read back at log steps and at the end of
an epoch, never per step: `TrainSums`, one packed tensor (one device add per micro-batch, one read per look)
with a named view per part. For n tasks: per-task losses, per-task weights, the objective, the regularizer, and
per task the number of micro-batches that had a label for it.

A task without any label in a batch gets a loss of exactly 0 there (mtlrun/tasks.py): that is no measurement,
so a task's mean loss is over the micro-batches that had a label for it, and NaN (an empty cell) when none
had, as evaluation reports a split with nothing to measure (mtlrun/engine/evaluate.py).
"""

from __future__ import annotations

import math

import torch


class TrainSums:
    """Sums over the micro-batches trained since the start of the epoch (`count` of them), on the device."""

    def __init__(self, names: list[str], device: torch.device, packed: torch.Tensor | None = None, count: int = 0):
        self.names, n = list(names), len(names)
        self.packed = torch.zeros(sums_size(n), device=device) if packed is None else packed.to(device)
        self.count = count
        # the named parts: views of `packed`, so adding to one adds to it
        self.losses, self.weights = self.packed[:n], self.packed[n:2 * n]
        self.objective, self.regularizer = self.packed[2 * n], self.packed[2 * n + 1]
        self.labelled = self.packed[2 * n + 2:]
        self._logged, self._logged_count = self.packed.clone(), count  # at the last log step

    @classmethod
    def from_checkpoint(cls, names: list[str], device: torch.device, packed: torch.Tensor, count: int) -> TrainSums:
        return cls(names, device, from_checkpoint(packed, len(names), count), count)

    def add(self, losses: torch.Tensor, weights: torch.Tensor, objective: torch.Tensor, regularizer: torch.Tensor,
            labelled: torch.Tensor) -> None:
        """One trained micro-batch: every argument a float device tensor, [tasks] or [1]."""
        self.packed += torch.cat([losses, weights, objective, regularizer, labelled])
        self.count += 1

    def means(self) -> dict[str, float]:
        """The epoch's means so far (one host read)."""
        return train_means(self.names, self.packed, self.count)

    def means_since_last_log(self) -> dict[str, float]:
        """The means since the previous call (one host read): the trackers' per-step scalars."""
        means = train_means(self.names, self.packed - self._logged, self.count - self._logged_count)
        self._logged, self._logged_count = self.packed.clone(), self.count
        return means


def sums_size(n_tasks: int) -> int:
    return 3 * n_tasks + 2


def labelled_tasks(batch: dict, names: list[str], ones: torch.Tensor) -> torch.Tensor:
    """float [tasks] on the device: 1 where `batch` has a label for the task in at least one sample, else 0.
    `ones` (n 1s) is the answer when the batch has no label_mask: every sample is labelled."""
    masks = batch.get("label_mask")
    if not masks:
        return ones
    return torch.stack([masks[t].any().float() if t in masks else ones[i] for i, t in enumerate(names)])


def train_means(names: list[str], sums: torch.Tensor, count: int) -> dict[str, float]:
    """The means of `sums` over `count` micro-batches (a task's loss: over those labelled for it), one read."""
    n = len(names)
    means = sums[:2 * n + 2] / max(1, count)
    labelled = sums[2 * n + 2:]
    # every micro-batch labelled (the common case): the very division the row has always used, bit for bit
    losses = torch.where(labelled == count, means[:n],
                         torch.where(labelled > 0, sums[:n] / labelled.clamp_min(1), math.nan))
    values = torch.cat([losses, means[n:]]).tolist()
    out = {f"{t}/loss": v for t, v in zip(names, values[:n])}
    out.update({f"{t}/weight": v for t, v in zip(names, values[n:2 * n])})
    out["objective"], out["regularizer"] = values[2 * n], values[2 * n + 1]
    return out


def shown_losses(names: list[str], means: dict[str, float]) -> dict[str, str]:
    """The progress bar's running losses (train_means' values)."""
    shown = {t: f"{means[f'{t}/loss']:.3f}" for t in names}
    shown["loss"] = f"{means['objective']:.3f}"
    return shown


def from_checkpoint(sums: torch.Tensor, n_tasks: int, count: int) -> torch.Tensor:
    """A checkpoint's sums; one written before the per-task label counts counted every micro-batch for every
    task, which is what its loss sums were divided by."""
    if len(sums) == 2 * n_tasks + 2:
        return torch.cat([sums, sums.new_full((n_tasks,), float(count))])
    return sums
