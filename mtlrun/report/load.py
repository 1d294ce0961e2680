"""Find and read run dirs: finished runs (`config.yaml` + `results.json`, the run-dir contract of train and
eval) and failed multirun jobs (`error.json`, mtlrun/sweep.py)."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtlrun.errors import UsageError
from mtlrun.schema import RESERVED_TASK_KEYS
from mtlrun.sweep import ERROR_FILE, headline, read_error


SKIP_DIRS = {"checkpoints", ".hydra", "__pycache__"}


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
class FailedJob:
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


def load_run(path: Path, split: str) -> tuple[Run | None, str]:
    """The run at `path`, or None and the reason it was skipped."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        results = json.loads((path / "results.json").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return None, f"unreadable ({exc.__class__.__name__}: {exc})"
    raw = results.get("metrics") if isinstance(results, dict) else None
    if not isinstance(config, dict) or not isinstance(raw, dict):
        return None, "config.yaml or results.json is not in the run-dir format"
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
    choices = {}
    hydra_file = path / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            hydra_cfg = yaml.safe_load(hydra_file.read_text()) or {}
            choices = {str(k): str(v) for k, v in hydra_cfg["hydra"]["runtime"]["choices"].items()
                       if not str(k).startswith("hydra/") and v is not None}
        except (KeyError, TypeError, yaml.YAMLError):
            choices = {}
    sweep = results.get("robustness")
    return Run(path, config, metrics, choices, tasks, sweep if isinstance(sweep, dict) else None, missing), ""


def load_failure(path: Path) -> FailedJob:
    """A failed job's record; its error.json wins over a results.json left by an earlier run in the dir."""
    record = read_error(path) or {}
    overrides = record.get("overrides")
    return FailedJob(path, [str(o) for o in overrides] if isinstance(overrides, list) else [],
                     headline(record.get("error") or f"{ERROR_FILE} unreadable"))


def collect_runs(dirs: list[str], split: str, what: str) -> tuple[list[Run], list[FailedJob]]:
    """The finished runs under `dirs`, and the failed jobs among them."""
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
    runs = []
    failed = [load_failure(p) for p in unique if (p / ERROR_FILE).is_file()]
    for path in [p for p in unique if not (p / ERROR_FILE).is_file()]:
        run, reason = load_run(path, split)
        if run is None:
            print(f"warning: skipped {path}: {reason}", file=sys.stderr)
        else:
            runs.append(run)
    if not runs and failed:
        listed = "\n".join(f"  - {f.path}: {f.error}" for f in failed)
        raise UsageError(f"no finished run under {', '.join(dirs)}, only {len(failed)} failed job(s):\n{listed}")
    if not runs:
        raise UsageError(f"none of the {len(unique)} run(s) under {', '.join(dirs)} has {split} metrics; "
                         f"try --split val or --split test")
    return runs, failed
