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
import re
from pathlib import Path

from mtlrun.engine.signals import TrainingInterrupted
from mtlrun.errors import MtlrunError, TrackerError, UsageError

log = logging.getLogger("mtlrun")
ROW_KEYS = ("epoch", "split", "step")  # a metrics.csv row's position, not a value
ON_ERROR = ("fail", "continue")  # logger.<name>.on_error: what a tracker that cannot be started does to the run
RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # a tracker run id a checkpoint may carry (MLflow: 32 hex, wandb: 8)


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


def reason(exc: BaseException) -> str:
    """Why `exc` happened, in a few words: the OS error behind it (Connection refused, Permission denied), also
    when only its text carries it (MLflow reports HTTP failures as a message), else its first line."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror}: {cause.filename}" if cause.filename else cause.strerror
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    errno = re.search(r"\[Errno -?\d+\] ([^'\"()\[\]]+)", text)
    if errno:
        return errno.group(1).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class Logger:
    """One experiment tracker. __init__ takes its config group's keys and checks its package (require);
    check probes its store, start opens it, log writes values, close flushes and ends it (close is called
    however the run ends). What the fan-out (Trackers) reads of it:
    - `option`: its key in the `logger` group (set by build_loggers), for messages and checkpoints;
    - `on_error`: "fail" (the run stops, exit 1) or "continue" (it goes on without this tracker) when check or
      start fails; a tracker failing later (log, close) never stops the run;
    - `run_id`: the tracker's own id of its run, for those that have one (MLflow, wandb). Checkpoints carry
      it; a resumed run's logger finds it set before start, to continue that run instead of starting one."""

    option = "logger"
    on_error = "fail"
    run_id: str | None = None

    def check(self, run_dir: Path) -> None:
        """Called before the model is built: raise, in seconds not minutes, if start would not reach the
        tracker's store or server (a probe; nothing is logged yet)."""

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        """`config`: the run's resolved config; `step`: the optimizer step the run starts at (> 0 on resume)."""

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        """`axis`: "step" (per-step scalars, `step` is the optimizer step) or "epoch" (`step` is the epoch)."""

    def close(self, status: str) -> None:
        """`status`: "finished", "failed" or "killed" (a signal stopped the run)."""


def tracker_name(logger) -> str:
    return getattr(logger, "option", type(logger).__name__)


def check_on_error(logger, name: str) -> None:
    value = getattr(logger, "on_error", "fail")
    if value not in ON_ERROR:
        raise UsageError(f"logger.{name}.on_error={value}: must be one of {', '.join(ON_ERROR)}")


def opened(logger, call) -> bool:
    """Runs `call` (the logger's check or start): True if it worked; False if it failed and the logger's
    on_error is "continue" (one warning line). Otherwise one line: a UsageError for a config mistake (e.g. a
    URI no tracker accepts), else a TrackerError (exit 1: the store or server cannot be used)."""
    name = tracker_name(logger)
    try:
        call()
        return True
    except UsageError as exc:
        raise UsageError(f"logger={name}: {exc}") from exc
    except Exception as exc:  # the tracker's own errors: any type
        what = str(exc) if isinstance(exc, MtlrunError) else f"cannot be started: {reason(exc)}"
        if getattr(logger, "on_error", "fail") != "continue":
            raise TrackerError(f"logger={name}: {what} (logger.{name}.on_error=continue trains on without "
                               f"it)") from exc
        log.warning(f"logger={name}: {what}; training goes on without it (logger.{name}.on_error=continue)")
        return False


def check_trackers(loggers, run_dir: Path) -> list:
    """The loggers whose store answers (Logger.check), before the data and model are built; see `opened`."""
    return [logger for logger in loggers if opened(logger, lambda logger=logger: logger.check(Path(run_dir)))]


class Trackers:
    """The run's loggers, on rank 0 only (an empty fan-out elsewhere). A context manager: leaving it closes
    every logger that was started, with the run's outcome, so a crashed or interrupted run still flushes.

    The run is never lost to a tracker: one that fails to log (its server went away, its disk is full) is
    turned off with a warning and training goes on; it is not called again, not even to close (a dead
    server would be retried for minutes)."""

    def __init__(self, loggers=(), is_main: bool = True):
        self.loggers = list(loggers) if is_main else []
        self._started: list[Logger] = []
        self._all = list(self.loggers)  # turned off or not: their run ids stay in the checkpoints

    @property
    def active(self) -> bool:
        return bool(self.loggers)

    def resume_from(self, run_ids) -> None:
        """The trackers' run ids a checkpoint carries ({name: id}, see run_ids): each logger of that name
        continues its run. A checkpoint is untrusted data: anything but a plain id is left out."""
        if not isinstance(run_ids, dict):
            return
        for logger in self.loggers:
            run_id = run_ids.get(tracker_name(logger))
            if isinstance(run_id, str) and RUN_ID.fullmatch(run_id):
                logger.run_id = run_id

    def run_ids(self) -> dict[str, str]:
        """{name: the tracker's run id} (plain strings: checkpoints are read with weights_only=True)."""
        return {tracker_name(x): x.run_id for x in self._all if isinstance(getattr(x, "run_id", None), str)}

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        """Opens each logger once (a second call does nothing); one that cannot be opened: see `opened`."""
        for logger in list(self.loggers):
            if logger in self._started:
                continue
            if opened(logger, lambda logger=logger: logger.start(config, Path(run_dir), step)):
                self._started.append(logger)
            else:
                self.loggers.remove(logger)

    def log_step(self, values: dict[str, float], step: int) -> None:
        self._log({f"train_step/{k}": float(v) for k, v in values.items()}, step, "step")

    def log_rows(self, rows: list[dict]) -> None:
        """metrics.csv rows ({"epoch", "split", "step", <task>/<metric>: value}) as `<split>/<key>` per epoch."""
        for row in rows:
            values = {f"{row['split']}/{k}": float(v) for k, v in row.items()
                      if k not in ROW_KEYS and isinstance(v, (int, float))}
            self._log(values, int(row["epoch"]), "epoch")

    def _log(self, values: dict[str, float], step: int, axis: str) -> None:
        for logger in list(self._started):
            try:
                logger.log(values, step, axis)
            except Exception as exc:  # the tracker's own errors: any type
                self._started.remove(logger)
                self.loggers.remove(logger)
                log.warning(f"logger={tracker_name(logger)}: logging failed at {axis} {step} ({reason(exc)}); it "
                            f"is turned off for the rest of the run, training goes on")

    def close(self, status: str = "finished") -> None:
        started, self._started = self._started, []
        for logger in started:
            try:
                logger.close(status)
            except Exception as exc:  # one tracker failing to close must not keep the others from flushing
                log.warning(f"logger={tracker_name(logger)}: closing failed ({reason(exc)}); the run's own "
                            f"records (checkpoints, metrics.csv) do not depend on it")

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        interrupted = kind is not None and issubclass(kind, (TrainingInterrupted, KeyboardInterrupt))
        self.close("finished" if kind is None else "killed" if interrupted else "failed")
