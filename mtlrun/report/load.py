"""Find and read run dirs: finished runs (`config.yaml` + `results.json`, the run-dir contract of train and
eval) and failed multirun jobs (`error.json`, mtlrun/sweep.py)."""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtlrun.errors import UsageError
from mtlrun.schema import RESERVED_TASK_KEYS
from mtlrun.sweep import ERROR_FILE, headline, read_error
from mtlrun.untrusted_files import UntrustedFileError, describe, read_json, read_yaml


SKIP_DIRS = {"checkpoints", ".hydra", "__pycache__"}
UNREADABLE = "unreadable"  # how load_run's reason starts for a run whose files are not what mtlrun writes


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict[str, float]  # "<task>/<metric>" on the reported split; losses left out
    choices: dict[str, str]  # Hydra group choices from .hydra/hydra.yaml ({} when the run has none)
    tasks: list[str]
    robustness: dict | None = None  # an eval run's corruption sweep (results.json "robustness")
    missing: set[str] = field(default_factory=set)  # "<task>/<metric>" written as null: nothing measured

    @property
    def seed(self):
        return self.config.get("seed")


@dataclass
class FailedRun:
    """A failed multirun job's dir as the report lists it, read back from its error.json (the sweep that ran
    it held the same failure as a sweep.JobOutcome)."""

    path: Path
    overrides: list[str]
    error: str  # its first line (and first listed problem)


def find_run_dirs(root: Path) -> list[Path]:
    """Run dirs (finished or failed) at or under `root`; a run dir is not searched further."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if ERROR_FILE in filenames or ("results.json" in filenames and "config.yaml" in filenames):
            found.append(Path(dirpath))
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
    return found


def _natural(path: Path):
    """Sort multirun job dirs 0, 1, ..., 10 in numeric order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def task_nodes(config: dict) -> dict:
    tasks = config.get("tasks") or {}
    return {k: v for k, v in tasks.items() if k not in RESERVED_TASK_KEYS and isinstance(v, dict)}


# Larger than any metric mtlrun measures; its square would overflow the std over seeds (1e308 did).
MAX_METRIC = 1e100


def _number_problem(value, where: str) -> str | None:
    """Why `value` is not a metric value (a finite number within MAX_METRIC, or null), or None."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and math.isfinite(value) and abs(value) <= MAX_METRIC):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{where} is {value!r}, beyond the ±{MAX_METRIC:g} a metric can have"
    return f"{where} is {describe(value)}, not a number or null"


def _config_problem(config: dict) -> str | None:
    """What in a run's config.yaml the report cannot use, or None."""
    if not isinstance(config.get("tasks"), (dict, type(None))):
        return f"config.yaml: tasks is {describe(config['tasks'])}, not a mapping of tasks"
    seed = config.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return f"config.yaml: seed is {describe(seed)}, not an integer"
    return None


def _robustness_problem(sweep) -> str | None:
    """What in results.json's `robustness` (an eval run's corruption sweep, mtlrun/eval.py) is malformed."""
    if not isinstance(sweep, dict):
        return f"results.json: robustness is {describe(sweep)}, not a mapping"
    levels = sweep.get("levels")
    if not isinstance(levels, list) or not levels or any(v is None or _number_problem(v, "") for v in levels):
        return "results.json: robustness.levels is not a list of numbers"
    for name in ("modality", "noise"):
        if not isinstance(sweep.get(name), str):
            return f"results.json: robustness.{name} is {describe(sweep.get(name))}, not a name"
    for name in ("metrics", "auc"):
        if not isinstance(sweep.get(name, {}), dict):
            return f"results.json: robustness.{name} is {describe(sweep[name])}, not a mapping"
    for key, curve in sweep.get("metrics", {}).items():
        if not isinstance(curve, list) or len(curve) != len(levels):
            return f"results.json: robustness.metrics[{key!r}] is not a list of {len(levels)} values (one per level)"
        problem = next(filter(None, (_number_problem(v, f"robustness.metrics[{key!r}]") for v in curve)), None)
        if problem:
            return f"results.json: {problem}"
    auc = next(filter(None, (_number_problem(v, f"robustness.auc[{k!r}]") for k, v in sweep.get("auc", {}).items())),
               None)
    return f"results.json: {auc}" if auc else None


def _results_problem(results: dict) -> str | None:
    """What in a run's results.json the report cannot use, or None."""
    raw = results.get("metrics")
    if not isinstance(raw, dict):
        return f"results.json: metrics is {describe(raw)}, not a mapping of metric values"
    for key, value in raw.items():
        problem = _number_problem(value, f"metrics[{key!r}]")
        if problem:
            return f"results.json: {problem}"
    return _robustness_problem(results["robustness"]) if results.get("robustness") is not None else None


def _hydra_choices(path: Path) -> dict[str, str]:
    """The Hydra group choices in `.hydra/hydra.yaml` ({} without one); UntrustedFileError if unreadable."""
    hydra_file = path / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    hydra_cfg = read_yaml(hydra_file, expect=None)
    try:
        return {str(k): str(v) for k, v in hydra_cfg["hydra"]["runtime"]["choices"].items()
                if not str(k).startswith("hydra/") and v is not None and not isinstance(v, (dict, list))}
    except (KeyError, TypeError, AttributeError):
        return {}


def load_run(path: Path, split: str) -> tuple[Run | None, str]:
    """The run at `path`, or None and the reason it was skipped (`unreadable (...)`: a file that is not what
    mtlrun writes; config.yaml and results.json are data that anyone may have edited)."""
    try:
        config = read_yaml(path / "config.yaml")
        results = read_json(path / "results.json")
        choices = _hydra_choices(path)
    except UntrustedFileError as exc:
        return None, f"{UNREADABLE} ({exc.where_why})"
    problem = _config_problem(config) or _results_problem(results)
    if problem:
        return None, f"{UNREADABLE} ({problem})"
    raw = results["metrics"]
    metrics, missing = {}, set()
    for key, value in raw.items():
        key_split, _, rest = key.partition("/")
        task, _, metric = rest.partition("/")
        if key_split == split and task and metric and metric != "loss":
            if value is None:  # null: the split had nothing to measure for the task (mtlrun.engine.evaluate)
                missing.add(rest)
            else:
                metrics[rest] = float(value)
    if not metrics and not missing:
        measured = sorted({k.split("/", 1)[0] for k in raw})
        return None, f"no {split} metrics (it has: {', '.join(measured) or 'none'})"
    order = list(task_nodes(config))
    present = {k.split("/", 1)[0] for k in [*metrics, *missing]}
    tasks = [t for t in order if t in present] + sorted(present - set(order))
    return Run(path, config, metrics, choices, tasks, results.get("robustness"), missing), ""


def load_failure(path: Path) -> FailedRun:
    """A failed job's record; its error.json wins over a results.json left by an earlier run in the dir."""
    record = read_error(path) or {}
    overrides = record.get("overrides")
    return FailedRun(path, [str(o) for o in overrides] if isinstance(overrides, list) else [],
                     headline(record.get("error") or f"{ERROR_FILE} unreadable"))


@dataclass
class SkippedRun:
    path: Path
    reason: str  # `unreadable (<file> line N: why)` or `no <split> metrics (...)`


def collect_runs(dirs: list[str], split: str, what: str) -> tuple[list[Run], list[FailedRun], list[SkippedRun]]:
    """The finished runs under `dirs`, the failed jobs among them, and the run dirs left out (one warning
    line each on stderr). Exit 2 when no run is left."""
    paths: list[Path] = []
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise UsageError(f"{d}: no such directory" if not root.exists() else f"{d}: not a directory")
        paths += find_run_dirs(root)
    unique = sorted({p.resolve(): p for p in paths}.values(), key=_natural)
    if not unique:
        raise UsageError(f"no runs found under {', '.join(dirs)} ({what}): a run dir holds results.json "
                         f"and config.yaml (written by mtlrun train / mtlrun eval)")
    runs, skipped = [], []
    failed = [load_failure(p) for p in unique if (p / ERROR_FILE).is_file()]
    for path in [p for p in unique if not (p / ERROR_FILE).is_file()]:
        run, reason = load_run(path, split)
        if run is None:
            print(f"warning: skipped {path}: {reason}", file=sys.stderr)
            skipped.append(SkippedRun(path, reason))
        else:
            runs.append(run)
    if not runs and failed:
        listed = "\n".join(f"  - {f.path}: {f.error}" for f in failed)
        raise UsageError(f"no finished run under {', '.join(dirs)}, only {len(failed)} failed job(s):\n{listed}")
    if not runs and all(s.reason.startswith(UNREADABLE) for s in skipped):
        raise UsageError(f"no readable run under {', '.join(dirs)}: {len(skipped)} run dir(s), every one "
                         f"unreadable (warnings above), e.g. {skipped[0].path}: {skipped[0].reason}")
    if not runs:
        raise UsageError(f"none of the {len(unique)} run(s) under {', '.join(dirs)} has {split} metrics; "
                         f"try --split val or --split test")
    return runs, failed, skipped
