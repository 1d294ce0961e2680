"""Which epoch is best (`trainer.monitor`, `trainer.monitor_mode`) and when to stop early."""

from __future__ import annotations


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

    def value(self, val: dict[str, float]) -> float:
        if self.key == "monitor":
            main = [t for t, task in self.tasks.items() if not task.auxiliary] or list(self.tasks)
            values = []
            for t in main:
                metric = self.tasks[t].metric_names[0]
                sign = 1.0 if self.tasks[t].higher_is_better[metric] else -1.0
                values.append(sign * val[f"{t}/{metric}"])
            return sum(values) / len(values)
        task, _, metric = self.key.partition("/")
        higher = metric != "loss" and self.tasks[task].higher_is_better[metric]
        if self.mode != "auto":
            higher = self.mode == "max"
        return val[self.key] if higher else -val[self.key]

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
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.epochs_since_best = state["epochs_since_best"]
