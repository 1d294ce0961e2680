"""Evaluation over a whole split: every sample counted once across DDP ranks, no host sync per batch.

A task with nothing to measure in the split (no labelled sample, or no valid pixel: partial-label data makes
this common) gets NaN for its loss and every metric, with a warning naming the task and the split: "missing"
(null in results.json, an empty cell in metrics.csv, "–" in tables), never a 0 that looks perfect."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from mtlrun import distributed
from mtlrun.data.loading import to_device
from mtlrun.engine.device import autocast

log = logging.getLogger("mtlrun")


def count_batches(limit, available: int) -> int:
    """`limit` is null (all), an int (that many batches) or a float in (0, 1] (that fraction)."""
    if limit is None:
        return available
    if isinstance(limit, float):
        return min(available, max(1, int(limit * available)))
    return min(available, int(limit))


@torch.no_grad()
def evaluate_split(model: nn.Module, tasks: dict, loader, *, device: torch.device, precision: str = "32",
                   limit_batches=None, transform=None, split: str = "evaluation",
                   warn: bool = True) -> dict[str, float]:
    """{"<task>/loss": ..., "<task>/<metric>": ...} over this rank's `loader` (DataModule.eval_loader) or its
    first `limit_batches` batches; sums are all-reduced, so under DDP every rank gets the whole split's values.

    `transform(batch) -> batch`, if given, is applied to every batch on the device (robustness noise).
    `split` names the split in the warning about tasks with nothing to measure (`warn=False`: no warning)."""
    limit = count_batches(limit_batches, len(loader))
    names = list(tasks)
    metrics = {t: tasks[t].metrics() for t in names}
    for m in metrics.values():
        m.reset(device)
    loss_sums = torch.zeros(2, len(names), dtype=torch.float64, device=device)  # loss x labelled, labelled
    was_training = model.training
    model.eval()
    for i, batch in enumerate(loader):
        if i >= limit:
            break
        batch = to_device(batch, device)
        if transform is not None:
            batch = transform(batch)
        with autocast(device, precision):
            preds = model(batch["inputs"], modality_mask=batch.get("modality_mask"))
        masks = batch.get("label_mask", {})
        for j, t in enumerate(names):
            target, mask = batch["targets"][t], masks.get(t)
            labelled = mask.sum() if mask is not None else torch.tensor(len(target), device=device)
            loss_sums[0, j] += tasks[t].loss(preds[t], target, mask).double() * labelled
            loss_sums[1, j] += labelled
            metrics[t].update(preds[t], target, mask)
    model.train(was_training)
    distributed.reduce_over_ranks_([loss_sums, *[s for m in metrics.values() for s in m.states()]])
    out = {}
    losses, labelled = (loss_sums[0] / loss_sums[1].clamp_min(1)).tolist(), loss_sums[1].tolist()
    for j, t in enumerate(names):
        values = metrics[t].compute()
        out[f"{t}/loss"] = losses[j] if labelled[j] > 0 else math.nan
        out.update({f"{t}/{k}": v for k, v in values.items()})
    if warn:
        warn_missing(out, names, split)
    return out


def missing_tasks(values: dict[str, float], tasks) -> list[str]:
    """The tasks whose metrics are all NaN in `values` ({"<task>/<metric>": ...}): nothing was measured."""
    missing = []
    for t in tasks:
        own = [v for k, v in values.items() if k.split("/", 1)[0] == t and not k.endswith("/loss")]
        if own and all(math.isnan(v) for v in own):
            missing.append(t)
    return missing


def warn_missing(values: dict[str, float], tasks, split: str) -> None:
    missing = missing_tasks(values, tasks)
    if missing and distributed.dist_info().is_main:
        log.warning(f"{split} split: nothing to measure for task(s) {', '.join(repr(t) for t in missing)} (no "
                    f"labelled sample or no valid pixel): their metrics are missing (NaN; null in results.json, "
                    f"'–' in tables), not 0")
