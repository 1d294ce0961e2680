"""Multirun sweeps (`mtlrun train -m ...`) that survive a failing job.

Hydra 1.3's BasicLauncher runs the jobs one after another in this process. Its `run_job` catches an
Exception raised by a job and marks it FAILED, but BasicSweeper then re-raises the first failure, with a
traceback, once the batch has run (the whole sweep unless `max_batch_size` is set), and a SystemExit (how the
single-run path ends on an error) is no Exception: it leaves the launcher at once and ends the sweep. So a
multirun job handles its own failure here: it writes ERROR_FILE into its job dir, prints one `error:` line
and returns normally, and `finish` prints a summary after the sweep and picks the exit code. An interrupt
(TrainingInterrupted: SIGINT / SIGTERM) is not a job failure: it still ends the whole sweep.

The sweeper may be another one than Hydra's basic sweeper: with hydra-optuna-sweeper (`hparams_search=...`)
a job's return value is the number Optuna optimises (mtlrun/objective.py). A failed job returns NoResult,
which is no number, so Optuna marks the trial failed and asks for the next (a NaN would end the sweep:
hydra-optuna-sweeper 1.3 then tells optuna 2.10 a failed trial with a value, which raises). When no trial
completes, the plugin raises while asking Optuna for the best one; tolerate_no_completed_trial turns that
into a warning, so the summary and exit code are those of any sweep whose jobs all failed.

Under torchrun every rank runs the same sweep; after each job the ranks exchange their outcome, so all of
them count the job as failed when any rank failed, and only rank 0 writes and prints. That holds with Hydra's
basic sweeper and launcher only: `launcher_keeps_ranks_in_step` stops any other under torchrun (exit 2).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ERROR_FILE = "error.json"  # a failed job's record; results.json stays the record of a successful run
USAGE_EXIT, FAILURE_EXIT = 2, 1


@dataclass
class JobOutcome:
    num: int
    job_dir: str
    overrides: list[str] = field(default_factory=list)
    error: str | None = None  # the message; None when the job succeeded
    error_type: str = ""
    exit_code: int = 0
    interrupted: str = ""  # the signal that stopped the job, and with it the sweep

    @property
    def failed(self) -> bool:
        return self.error is not None


_outcomes: list[JobOutcome] = []  # this process's multirun jobs, in the order they ran


@dataclass(frozen=True)
class NoResult:
    """A failed job's return value: not float-castable, so a sweeper that optimises the return value marks
    the trial failed; its text is what the sweeper's warning shows."""

    error_file: str

    def __str__(self) -> str:
        return f"no value: the job failed, see {self.error_file}"


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def headline(message: str) -> str:
    """The first line of an error; for a list of problems (`...:` then `  - ...`) also the first problem."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        head += f" {lines[1].removeprefix('- ')}" + (" ..." if len(lines) > 2 else "")
    return head


def hydra_node(command: str, overrides: list[str]):
    """The `hydra` node the command line composes to, from what picks the launcher, sweeper and sweep dir
    (hydra/... groups, an experiment, hydra.sweep.*: sweep values such as seed=0,1 do not compose outside a
    sweep); None when that does not compose (Hydra itself then reports why)."""
    from hydra import compose, initialize_config_dir

    from mtlrun.config import config_dir

    picks = [o for o in overrides if o.startswith(("hydra/", "experiment=", "+experiment=", "hydra.sweep."))
             and "," not in o]
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(command, overrides=picks, return_hydra_config=True).hydra
    except Exception:  # noqa: BLE001
        return None


def launcher_keeps_ranks_in_step(command: str, overrides: list[str]) -> bool:
    """A sweep under torchrun/srun is correct only with Hydra's basic sweeper and launcher, which run the same
    jobs in the same order in every rank's process: any other (submitit, joblib, optuna's sampler) would submit
    the jobs once per rank or give the ranks different jobs. False, after saying so, for any other."""
    hydra_cfg = hydra_node(command, overrides)
    if hydra_cfg is None:
        return True
    chosen = {"hydra/launcher": str(hydra_cfg.launcher.get("_target_", "")),
              "hydra/sweeper": str(hydra_cfg.sweeper.get("_target_", ""))}
    other = [f"{group}={target.rsplit('.', 1)[-1]}" for group, target in chosen.items()
             if target.rsplit(".", 1)[-1] not in ("BasicLauncher", "BasicSweeper")]
    if other:
        print(f"error: a -m sweep under torchrun/srun runs in every rank's process, which only Hydra's basic "
              f"launcher and sweeper keep in step; {' and '.join(other)} would launch its jobs once per rank. "
              f"Start this sweep without torchrun/srun (hydra/launcher=slurm runs each job as a "
              f"multi-GPU job)", file=sys.stderr)
    return not other


SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")  # mtlrun's preset and the plugin's own


def launcher_installed(overrides: list[str]) -> bool:
    """hydra/launcher=slurm (mtlrun's preset) or submitit_* needs hydra-submitit-launcher: without it, say
    which extra (False)."""
    import importlib.util

    chosen = last_value(overrides, "hydra/launcher")
    if chosen in SUBMITIT_LAUNCHERS and not importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"):
        print(f'error: hydra/launcher={chosen} needs hydra-submitit-launcher: pip install "mtlrun[slurm]"',
              file=sys.stderr)
        return False
    return True


def asks_multirun(overrides: list[str]) -> bool:
    return any(o in ("-m", "--multirun") for o in overrides)


def last_value(overrides: list[str], key: str) -> str | None:
    """The value the command line's last `key=...` gives (the one Hydra uses), or None."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return given[-1] if given else None


def optuna_search(overrides: list[str]) -> str | None:
    """The override that asks for an Optuna search (hparams_search presets run hydra-optuna-sweeper)."""
    asked = [o for o in overrides if (o.lstrip("+").partition("=")[0] == "hparams_search"
                                      and o.partition("=")[2] not in ("", "null"))
             or o.lstrip("+") == "hydra/sweeper=optuna"]
    return asked[-1] if asked else None


def sweeper_installed(overrides: list[str]) -> bool:
    """An Optuna search needs hydra-optuna-sweeper (the optional extra): without it, say so (False)."""
    from importlib.util import find_spec

    search = optuna_search(overrides)
    if search and not all(find_spec(name) is not None for name in ("hydra_plugins.hydra_optuna_sweeper", "optuna")):
        print(f"error: {search}: an Optuna search needs hydra-optuna-sweeper, which is not installed; "
              f'pip install "mtlrun[optuna]"', file=sys.stderr)
        return False
    return True


def warn_unused_sweep() -> None:
    """A config's own sweep (`hydra.sweeper.params`, e.g. experiment=stl_baselines) only applies with -m."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
    if hydra_cfg.mode == RunMode.RUN and params:
        sweep = " ".join(f"{k}={v}" for k, v in params.items())
        logging.getLogger("mtlrun").warning(f"the config sweeps {sweep}, which applies only to a multirun: "
                                            f"this single run ignores it (add -m to run the sweep)")


def outcomes_on_disk(command: str, overrides: list[str], since: float) -> list[JobOutcome]:
    """The jobs of a sweep whose launcher ran them in other processes (hydra/launcher=submitit_*), read back
    from the job dirs they wrote since `since` (a time.time()): ERROR_FILE marks a failed job."""
    hydra_cfg = hydra_node(command, overrides)
    sweep_dir = Path(str(hydra_cfg.sweep.dir)) if hydra_cfg is not None else None
    if sweep_dir is None or not sweep_dir.is_dir():
        return []
    outcomes = []
    for job_dir in sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)):
        stamp = job_dir / ".hydra" / "overrides.yaml"
        if not stamp.is_file() or stamp.stat().st_mtime < since:
            continue  # not a job of this sweep
        outcome = JobOutcome(num=int(job_dir.name), job_dir=str(job_dir),
                             overrides=[str(o) for o in (_yaml_list(stamp))])
        record = read_error(job_dir)
        if record is not None:
            outcome.error, outcome.error_type = str(record.get("error")), str(record.get("error_type", ""))
            outcome.exit_code = int(record.get("exit_code", FAILURE_EXIT))
        outcomes.append(outcome)
    return outcomes


def _yaml_list(path: Path) -> list:
    from omegaconf import OmegaConf

    try:
        return list(OmegaConf.load(path))
    except Exception:  # noqa: BLE001 - unreadable: the job is still counted
        return []


def recorded(fn):
    """`fn` as a job whose error, in a multirun, is recorded in its dir while the sweep goes on (run_job)."""
    return (lambda cfg: run_job(fn, cfg)) if is_multirun() else fn


def run_job(fn, cfg):
    """Run one multirun job: its result, or a NoResult after recording its failure (an interrupt passes)."""
    from hydra.core.hydra_config import HydraConfig

    from mtlrun import distributed
    from mtlrun.engine.signals import TrainingInterrupted
    from mtlrun.errors import MtlrunError, RunDirRefused

    hydra_cfg = HydraConfig.get()
    outcome = JobOutcome(num=int(hydra_cfg.job.num), job_dir=str(hydra_cfg.runtime.output_dir),
                         overrides=[str(o) for o in hydra_cfg.overrides.task])
    error_path = Path(outcome.job_dir) / ERROR_FILE
    main_rank = distributed.dist_info().is_main
    result, trace, refused = None, None, False
    try:
        result = fn(cfg)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        outcome.interrupted = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
        _outcomes.append(outcome)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one job is recorded and the sweep goes on
        # strings only: the exception's frames would keep the failed job's model and tensors alive
        outcome.error, outcome.error_type = str(exc) or type(exc).__name__, type(exc).__name__
        outcome.exit_code = exc.exit_code if isinstance(exc, MtlrunError) else FAILURE_EXIT
        refused = isinstance(exc, RunDirRefused)  # the dir is another run's: leave no error record in it
        if not isinstance(exc, MtlrunError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            trace = "".join(traceback.format_exception(exc))
    outcome = _agree(outcome)
    _outcomes.append(outcome)
    if outcome.failed and main_rank:
        _report_failure(outcome, None if refused else error_path, trace)
    elif main_rank:
        error_path.unlink(missing_ok=True)  # left by an earlier sweep into the same dir
    return NoResult(str(error_path)) if outcome.failed else result


def tolerate_no_completed_trial() -> None:
    """hydra-optuna-sweeper raises (with a traceback) after a sweep in which no trial completed, when it asks
    Optuna for the best trial. Every mtlrun job that fails is recorded here and summed up by `finish`, so
    that case becomes a warning. A no-op without the plugin; the plugin's other errors pass."""
    try:  # the implementation: Hydra's plugin scan re-executes the public module, replacing its class
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return
    original = OptunaSweeperImpl.sweep
    if getattr(original, "tolerates_no_completed_trial", False):
        return

    def sweep(self, arguments):
        try:
            return original(self, arguments)
        except ValueError as exc:
            if "No trials are completed" not in str(exc) or not _outcomes or not all(o.failed for o in _outcomes):
                raise
            logging.getLogger("mtlrun").warning("no trial succeeded, so Optuna has no best trial (no "
                                                "optimization_results.yaml)")

    sweep.tolerates_no_completed_trial = True
    OptunaSweeperImpl.sweep = sweep


def _agree(outcome: JobOutcome) -> JobOutcome:
    """Under torchrun: the first failing rank's outcome on every rank (this one's without DDP)."""
    from mtlrun import distributed

    if not distributed.dist_info().enabled:
        return outcome
    failed = [o for o in distributed.gather_objects(outcome) if o.failed]
    return JobOutcome(**{**asdict(failed[0]), "job_dir": outcome.job_dir}) if failed else outcome


def _report_failure(outcome: JobOutcome, error_path: Path | None, trace: str | None) -> None:
    from mtlrun import __version__

    record = {"status": "failed", "job": outcome.num, "overrides": outcome.overrides, "error": outcome.error,
              "error_type": outcome.error_type, "exit_code": outcome.exit_code, "mtlrun_version": __version__}
    message = f"error: job {outcome.num} failed: {outcome.error}"
    if trace:
        sys.stderr.write(trace)
    print(message, file=sys.stderr)
    log_error_to_files(f"{trace or ''}{message}")
    if error_path is None:
        return
    try:
        tmp = error_path.with_name(f".{ERROR_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, error_path)
    except OSError as exc:
        print(f"warning: could not write {error_path}: {exc}", file=sys.stderr)


def log_error_to_files(message: str) -> None:
    """Record an error in the run's (or the job's) log file, without repeating it on the console: the caller
    has printed it on stderr already. Used here for a failed job and by mtlrun.cli for a failed run."""
    record = logging.LogRecord("mtlrun", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _varying(outcomes: list[JobOutcome]) -> dict[int, str]:
    """Each job's overrides that differ between the jobs of the sweep (all of them for a single job)."""
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in job.overrides) for job in outcomes]
    keys = {k for overrides in parsed for k in overrides}
    varying = {k for k in keys if len({overrides.get(k) for overrides in parsed}) > 1}
    return {job.num: " ".join(o for o in job.overrides if len(outcomes) == 1 or o.split("=", 1)[0] in varying)
            for job in outcomes}


def summary(outcomes: list[JobOutcome]) -> str:
    failed = [o for o in outcomes if o.failed]
    stopped = [o for o in outcomes if o.interrupted]
    shown = _varying(outcomes)
    lines = [f"sweep: {len(outcomes)} job(s) ran, {len(outcomes) - len(failed) - len(stopped)} succeeded, "
             f"{len(failed)} failed"]
    for job in stopped:
        lines[0] += f", job {job.num} stopped by {job.interrupted} (the later jobs did not run)"
    for job in failed:
        lines.append(f"  job {job.num} [{shown[job.num] or 'no overrides'}]: {headline(job.error)}")
    if failed:
        lines.append(f"  each failed job's {ERROR_FILE} has the whole error, e.g. "
                     f"{Path(failed[0].job_dir) / ERROR_FILE}")
    return "\n".join(lines)


def exit_code(outcomes: list[JobOutcome]) -> int:
    """0 when every job succeeded, 2 when every failure was a usage error, else 1."""
    failed = [o for o in outcomes if o.failed]
    if not failed:
        return 0
    return USAGE_EXIT if all(o.exit_code == USAGE_EXIT for o in failed) else FAILURE_EXIT


def finish(code, command: str | None = None, overrides: list[str] = (), since: float = 0.0) -> int | str | None:
    """After Hydra returns (or exits): print the summary when a job failed; the process's exit code.

    An exit that is already non-zero (an interrupt, a usage error before any job) keeps its code. A multirun
    whose jobs ran elsewhere (a submitit launcher) left no outcome here: they are read from its job dirs."""
    from mtlrun import distributed

    outcomes = list(_outcomes)
    _outcomes.clear()
    if not outcomes and command and asks_multirun(overrides):
        outcomes = outcomes_on_disk(command, overrides, since)
    if not any(o.failed for o in outcomes):
        return code
    if distributed.dist_info().is_main:
        print(summary(outcomes), file=sys.stderr)
    return code if code not in (0, None) else exit_code(outcomes)


def read_error(job_dir: Path) -> dict | None:
    """A failed job's record (ERROR_FILE in its dir), or None when it has none or it is unreadable."""
    from mtlrun.untrusted_files import UntrustedFileError, read_json

    try:  # bounded: `mtlrun report` reads it back from folders anyone may have edited
        return read_json(Path(job_dir) / ERROR_FILE, finite=False)
    except UntrustedFileError:
        return None
