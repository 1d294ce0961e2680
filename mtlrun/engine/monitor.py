"""Which epoch is best (`trainer.monitor`, `trainer.monitor_mode`) and when to stop early."""

from __future__ import annotations

# `auto`: a first-validation value this close to 0 (e.g. an MAE of 0) is not divided by
REFERENCE_FLOOR = 1e-8


class Monitor:
    """Turns validation metrics into one higher-is-better number and tracks the best epoch.

    `auto` is scale-free: the mean over main (non-auxiliary) tasks of the relative change of each task's first
    metric against the first validation of the run, signed by the metric's direction (as Δm% is against a
    baseline), so an MAE of 8.5 weighs no more than an accuracy of 0.9. It is 0 at the first validation and
    > 0 once the tasks improve on average. Otherwise a `val/<task>/<metric>` key, whose direction comes from
    the metric (a loss is lower-is-better) unless `mode` says max or min.
    """

    def __init__(self, key: str, mode: str, tasks: dict, min_delta: float, patience: int | None):
        self.key = "monitor" if key == "auto" else key.removeprefix("val/")
        self.mode, self.tasks = mode, tasks
        self.min_delta, self.patience = float(min_delta), patience
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0
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
        return (f"monitor: auto = mean over tasks of the relative change of {terms} against the first "
                f"validation (0 there, > 0 when the tasks improve; scale-free, as Δm%)")

    def _higher(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        task, _, metric = self.key.partition("/")
        return metric != "loss" and self.tasks[task].higher_is_better[metric]

    def value(self, val: dict[str, float]) -> float:
        if self.key == "monitor":
            terms = self._auto_terms()
            if self.reference is None:
                self.reference = {key: val[key] for key, _ in terms}
            changes = [sign * (val[key] - self.reference[key]) / max(abs(self.reference[key]), REFERENCE_FLOOR)
                       for key, sign in terms]
            return sum(changes) / len(changes)
        return val[self.key] if self._higher() else -val[self.key]

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch` (1-based); True when it is the new best."""
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
        if self.key != "monitor":
            return
        val_rows = [row for row in state.get("history", []) if row.get("split") == "val"]
        if val_rows:
            self.reference = None
            self.value(val_rows[0])
            best = [row for row in val_rows if row.get("epoch") == self.best_epoch]
            if best:
                self.best_value = self.value(best[0])
