"""Which epoch is best (`trainer.monitor`, `trainer.monitor_mode`) and when to stop early.

A metric with nothing to measure is NaN (mtlrun.engine.evaluate). `auto` averages over the main tasks that
have a measurement and warns once about the others; which tasks those are is fixed by the val split's labels,
so the average is over the same tasks at every epoch. A NaN monitor value is "no measurement": it never
becomes best and does not count toward early-stopping patience (warned about). A run whose monitor is NaN at
every epoch has no best epoch: best.pt is then the latest checkpoint (the trainer writes it and warns).
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("mtlrun")


class Monitor:
    """Turns validation metrics into one higher-is-better number and tracks the best epoch.

    `auto` is the mean over main (non-auxiliary) tasks of each task's first metric, signed by its direction;
    otherwise a `val/<task>/<metric>` key, whose direction comes from the metric (a loss is lower-is-better)
    unless `mode` says max or min.
    """

    def __init__(self, key: str, mode: str, tasks: dict, min_delta: float, patience: int | None):
        self.key = "monitor" if key == "auto" else key.removeprefix("val/")
        self.mode, self.tasks = mode, tasks
        self.min_delta, self.patience = float(min_delta), patience
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0
        self._warned: set[str] = set()

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

    def value(self, val: dict[str, float]) -> float:
        """The signed monitor value of one validation pass; NaN when there is nothing to measure."""
        if self.key == "monitor":
            main = [t for t, task in self.tasks.items() if not task.auxiliary] or list(self.tasks)
            values, unmeasured = [], []
            for t in main:
                metric = self.tasks[t].metric_names[0]
                sign = 1.0 if self.tasks[t].higher_is_better[metric] else -1.0
                v = val[f"{t}/{metric}"]
                if math.isnan(v):
                    unmeasured.append(t)
                else:
                    values.append(sign * v)
            if unmeasured and values:
                self._warn_once("auto", f"trainer.monitor=auto: val has nothing to measure for "
                                        f"{', '.join(unmeasured)}; the monitor averages over "
                                        f"{len(values)} other task(s)")
            return sum(values) / len(values) if values else math.nan
        task, _, metric = self.key.partition("/")
        higher = metric != "loss" and self.tasks[task].higher_is_better[metric]
        if self.mode != "auto":
            higher = self.mode == "max"
        return val[self.key] if higher else -val[self.key]

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch` (1-based); True when it is the new best. NaN: no measurement, nothing changes."""
        if math.isnan(value):
            self._warn_once("nan", f"val/{self.key} is NaN (nothing to measure in the val split): such an "
                                   f"epoch is never best and does not count toward early-stopping patience")
            return False
        improved = self.best_value is None or value > self.best_value + self.min_delta
        if improved:
            self.best_value, self.best_epoch, self.epochs_since_best = value, epoch, 0
        else:
            self.epochs_since_best += 1
        return improved

    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_since_best >= int(self.patience)

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.epochs_since_best = state["epochs_since_best"]
