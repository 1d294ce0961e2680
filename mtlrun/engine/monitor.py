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
# `auto`: a first-validation value this close to 0 (e.g. an MAE of 0) is not divided by
REFERENCE_FLOOR = 1e-8


class Monitor:
    """Turns validation metrics into one higher-is-better number and tracks the best epoch.

    `auto` is scale-free: the mean over main (non-auxiliary) tasks of the relative change of each task's first
    metric against the first validation of the run, signed by the metric's direction (as Δm% is against a
    baseline), so an MAE of 8.5 weighs no more than an accuracy of 0.9. It is 0 at the first validation and
    > 0 once the tasks improve on average. `mean` is the plain mean of the same signed metrics: comparable
    between runs (a sweep's objective), but only meaningful when the metrics share a scale. Otherwise a `val/<task>/<metric>` key, whose direction comes from
    the metric (a loss is lower-is-better) unless `mode` says max or min.
    """

    def __init__(self, key: str, mode: str, tasks: dict, min_delta: float, patience: int | None):
        self.key = "monitor" if key in ("auto", "mean") else key.removeprefix("val/")
        self.relative = key == "auto"  # `mean`: the plain signed mean, comparable between runs
        self.mode, self.tasks = mode, tasks
        self.min_delta, self.patience = float(min_delta), patience
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0
        self._warned: set[str] = set()
        self.reference: dict[str, float] | None = None  # `auto`: the first validation's metrics

    def _auto_terms(self) -> list[tuple[str, float]]:
        """(`task/metric`, sign) of the tasks `auto` averages: each main task's first metric."""
        main = [t for t, task in self.tasks.items() if not task.auxiliary] or list(self.tasks)
        return [(f"{t}/{self.tasks[t].metric_names[0]}",
                 1.0 if self.tasks[t].higher_is_better[self.tasks[t].metric_names[0]] else -1.0) for t in main]

    def describe(self) -> str:
        """What the monitor is, for the log."""
        if self.key != "monitor":
            return f"monitor: val/{self.key} ({'higher' if self._higher() else 'lower'} is better)"
        terms = ", ".join(f"{key} {'↑' if sign > 0 else '↓'}" for key, sign in self._auto_terms())
        if not self.relative:
            return f"monitor: mean = mean of {terms}, each signed so that higher is better"
        return (f"monitor: auto = mean over tasks of the relative change of {terms} against the first "
                f"validation (0 there, > 0 when the tasks improve; scale-free, as Δm%)")

    def _higher(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        task, _, metric = self.key.partition("/")
        return metric != "loss" and self.tasks[task].higher_is_better[metric]

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

    def value(self, val: dict[str, float]) -> float:
        """The signed monitor value of one validation pass; NaN when there is nothing to measure."""
        if self.key == "monitor":
            terms = [(key, sign) for key, sign in self._auto_terms() if not math.isnan(val[key])]
            unmeasured = [key for key, _ in self._auto_terms() if math.isnan(val[key])]
            if unmeasured and terms:
                self._warn_once("auto", f"trainer.monitor=auto: val has nothing to measure for "
                                        f"{', '.join(unmeasured)}; the monitor averages over "
                                        f"{len(terms)} other task(s)")
            if not terms:
                return math.nan
            if not self.relative:
                return sum(sign * val[key] for key, sign in terms) / len(terms)
            if self.reference is None:
                self.reference = {}
            for key, _ in terms:  # the first validation that measured the metric
                self.reference.setdefault(key, val[key])
            changes = [sign * (val[key] - self.reference[key]) / max(abs(self.reference[key]), REFERENCE_FLOOR)
                       for key, sign in terms]
            return sum(changes) / len(changes)
        return val[self.key] if self._higher() else -val[self.key]

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
        """From a checkpoint. `auto` takes its reference from the checkpoint's history (its first validation)
        and recomputes the best value from the best epoch's row, so a checkpoint written when `auto` was the
        plain mean of the metrics resumes on the scale-free value without a jump."""
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.epochs_since_best = state["epochs_since_best"]
        if self.key != "monitor" or not self.relative:
            return
        val_rows = [row for row in state.get("history", []) if row.get("split") == "val"]
        if val_rows:
            self.reference = None
            self.value(val_rows[0])
            best = [row for row in val_rows if row.get("epoch") == self.best_epoch]
            if best:
                self.best_value = self.value(best[0])
