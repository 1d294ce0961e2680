"""What a tracker implements (Logger), and the fan-out the Trainer talks to (Trackers).

Trackers are built on every rank, so a missing package stops every rank alike at start-up; only rank 0's
are started and written to. They see three kinds of values, all already on the host (the Trainer reads
them back at log steps and at the end of an epoch, never inside a step):
- per-step scalars (`train_step/<name>`, x-axis: the optimizer step), every `trainer.log_every_n_steps`
- per-epoch rows (`train/...`, `val/...`, `test/...`, x-axis: the epoch), the values metrics.csv holds
- at start, the resolved config (hyperparameters) and the run dir.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from mtlrun.engine.signals import TrainingInterrupted
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")
ROW_KEYS = ("epoch", "split", "step")  # a metrics.csv row's position, not a value


def require(package: str, extra: str, option: str) -> None:
    """A usage error naming the pip command when `package` is missing; imports nothing (that happens at start)."""
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"logger={option}: needs the {package} package, which is not installed: "
                         f'pip install "mtlrun[{extra}]" (or drop {option} from logger=[...])')


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"optim.lr": 0.001, ...}: a nested config as the flat key/value pairs trackers take as parameters."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class Logger:
    """One experiment tracker. __init__ takes its config group's keys and checks its package (require);
    start opens it, log writes values, close flushes and ends it (close is called however the run ends)."""

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        """`config`: the run's resolved config; `step`: the optimizer step the run starts at (> 0 on resume)."""

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        """`axis`: "step" (per-step scalars, `step` is the optimizer step) or "epoch" (`step` is the epoch)."""

    def close(self, status: str) -> None:
        """`status`: "finished", "failed" or "killed" (a signal stopped the run)."""


class Trackers:
    """The run's loggers, on rank 0 only (an empty fan-out elsewhere). A context manager: leaving it closes
    every logger that was started, with the run's outcome, so a crashed or interrupted run still flushes."""

    def __init__(self, loggers=(), is_main: bool = True):
        self.loggers = list(loggers) if is_main else []
        self._started: list[Logger] = []

    @property
    def active(self) -> bool:
        return bool(self.loggers)

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        """Opens each logger once (a second call does nothing)."""
        for logger in self.loggers:
            if logger not in self._started:
                logger.start(config, Path(run_dir), step)
                self._started.append(logger)

    def log_step(self, values: dict[str, float], step: int) -> None:
        self._log({f"train_step/{k}": float(v) for k, v in values.items()}, step, "step")

    def log_rows(self, rows: list[dict]) -> None:
        """metrics.csv rows ({"epoch", "split", "step", <task>/<metric>: value}) as `<split>/<key>` per epoch."""
        for row in rows:
            values = {f"{row['split']}/{k}": float(v) for k, v in row.items()
                      if k not in ROW_KEYS and isinstance(v, (int, float))}
            self._log(values, int(row["epoch"]), "epoch")

    def _log(self, values: dict[str, float], step: int, axis: str) -> None:
        for logger in self._started:
            logger.log(values, step, axis)

    def close(self, status: str = "finished") -> None:
        started, self._started = self._started, []
        for logger in started:
            try:
                logger.close(status)
            except Exception as exc:  # one tracker failing to close must not keep the others from flushing
                log.warning(f"logger {type(logger).__name__}: closing failed: {exc}")

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        interrupted = kind is not None and issubclass(kind, (TrainingInterrupted, KeyboardInterrupt))
        self.close("finished" if kind is None else "killed" if interrupted else "failed")


def grad_norm(optimizer, scaler=None):
    """The global L2 norm of the gradients (a device tensor: no host sync), as clip_grad_norm_ returns it;
    with fp16 loss scaling the gradients are still scaled here, so the scale is divided out."""
    import torch

    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norm / scaler.get_scale() if scaler is not None else norm
