"""The one number `mtlrun train` hands back to Hydra, for a sweeper that optimises it (`hparams_search=...`).

`optimized_metric` names it: null is the checkpoint monitor, `val/<trainer.monitor>` (`val/monitor` for
trainer.monitor=mean: the mean of each main task's first metric, each signed so that higher is better, the
value that picks best.pt). trainer.monitor=auto is relative to each run's own first validation, so its values
are not comparable between runs: a sweeper optimising it is refused (use mean, or name a metric); otherwise any metric key of results.json, `val/<task>/<metric>` or
`test/<task>/<metric>` (a task's `loss` too), measured on the best checkpoint. Its direction comes from the
monitor's mode for the monitor, else from the metric (a loss is minimised). An Optuna sweep must optimise it
that way (`hydra.sweeper.direction`): each trial checks it before training, as it checks the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtlrun.errors import UsageError

MONITOR = "val/monitor"  # trainer.monitor=auto|mean: the value Monitor computes (mtlrun/engine/monitor.py)
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Objective:
    key: str        # `val/monitor` or a results.json metric key
    direction: str  # maximize | minimize (Optuna's words)

    def value(self, metrics: dict[str, float], monitor_value: float) -> float | None:
        """The trial's value from the best checkpoint's metrics; None when it is NaN (a sweeper counts the
        trial as failed: Optuna refuses a NaN)."""
        value = float(monitor_value if self.key == MONITOR else metrics[self.key])
        return None if math.isnan(value) else value


def valid_keys(tasks: dict) -> list[str]:
    return [MONITOR] + [f"{split}/{name}/{metric}" for split in SPLITS for name, task in tasks.items()
                        for metric in ("loss", *task.metric_names)]


def _metric_direction(key: str, tasks: dict) -> str:
    _, task, metric = key.split("/", 2)
    higher = metric != "loss" and tasks[task].higher_is_better[metric]
    return "maximize" if higher else "minimize"


def resolve(optimized_metric, monitor: str, monitor_mode: str, tasks: dict) -> Objective:
    """The objective `optimized_metric` names for these tasks and this trainer.monitor / monitor_mode;
    a UsageError listing the valid keys when it names none (monitor is already validated)."""
    monitor_key = MONITOR if monitor in ("auto", "mean") else f"val/{monitor.removeprefix('val/')}"
    key = monitor_key if optimized_metric is None else optimized_metric
    valid = valid_keys(tasks)
    if not isinstance(key, str) or key not in valid:
        raise UsageError(f"optimized_metric={optimized_metric}: not a metric this run measures; valid: null (the "
                         f"checkpoint monitor, {monitor_key}), {', '.join(valid)}")
    if key == MONITOR:
        return Objective(key, "maximize")
    if key == monitor_key and monitor_mode in ("max", "min"):
        return Objective(key, "maximize" if monitor_mode == "max" else "minimize")
    return Objective(key, _metric_direction(key, tasks))


def check_sweeper_direction(objective: Objective, direction, optimized_metric, monitor: str = "mean") -> None:
    """A sweeper's `direction` (Optuna's: a name, an enum, or a list for several objectives) against the
    objective's: a sweep that maximises a loss would pick the worst trial. And the objective must compare
    between trials, which trainer.monitor=auto (relative to each run's first validation) does not."""
    if direction is None:
        return
    if objective.key == MONITOR and monitor == "auto":
        raise UsageError("optimized_metric=null with trainer.monitor=auto: auto is the relative change against "
                         "each run's own first validation, so trials cannot be compared by it; set "
                         "trainer.monitor=mean (the signed mean of each task's first metric, when they share a "
                         "scale, e.g. accuracies) or optimized_metric=val/<task>/<metric>")
    if not isinstance(direction, str) and hasattr(direction, "__iter__"):  # a list: one per objective
        if len(list(direction)) != 1:
            raise UsageError(f"hydra.sweeper.direction={list(direction)}: mtlrun train returns one value "
                             f"(optimized_metric); give one direction, hydra.sweeper.direction={objective.direction}")
        direction = list(direction)[0]
    name = str(getattr(direction, "name", direction))
    if name != objective.direction:
        shown = f"null ({objective.key})" if optimized_metric is None else optimized_metric
        raise UsageError(f"hydra.sweeper.direction={name}, but optimized_metric={shown} is to "
                         f"{objective.direction}; set hydra.sweeper.direction={objective.direction}, or optimize "
                         f"another metric")
