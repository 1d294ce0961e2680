"""`mtlrun report DIR [DIR ...]`: compare runs, mean ± std over seeds per config and Δm% against STL runs.

A run dir is any directory holding `results.json` and `config.yaml` (the run-dir contract of train and
eval); every DIR is searched recursively, so a Hydra multirun dir works as well as a single run. Runs are
grouped by their resolved config minus the seed and the keys that do not change what is trained (IGNORED,
plus `--ignore KEY`), and a group is labelled by what differs between the groups: the Hydra choice where a
whole config group differs (`weighting=pcgrad`), else `key=value`.

Runs with a single task (`tasks.only=[left]`, e.g. from `mtlrun train -m experiment=stl_baselines`) are
the single-task (STL) baselines of their task, unless `--stl DIR ...` names the baseline runs. For each
multi-task group and task, the baseline is the group of baseline runs with that task whose config is
closest to the group's (fewest differing keys outside `tasks`), averaged over its seeds. Δm% is
`mtlrun.metrics.delta_m` over every metric of the non-auxiliary tasks, computed per seed of the
multi-task group: the mean is the Δm% of the mean metrics, the std its spread over seeds.

A failed multirun job (a dir holding `error.json`, mtlrun/sweep.py) is listed with its overrides and error
under "Failed jobs" in the printed report, report.md and report.csv (kind `failed`); it counts in no
statistic.

Writes `report.md`, `report.csv` and `report.png` into `--out` (default: the first DIR, so a report stays
next to the runs it describes and never overwrites a file in the working directory).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtlrun.schema import RESERVED_TASK_KEYS
from mtlrun.errors import MtlrunError, UsageError
from mtlrun.sweep import ERROR_FILE, headline, read_error

# Keys that never change what a run trains or measures: they do not split runs into groups.
IGNORED = ("seed", "resume", "checkpoint", "split", "trainer.device", "trainer.progress_bar",
           "trainer.log_every_n_steps", "trainer.compile", "trainer.deterministic", "data.num_workers",
           "data.pin_memory", "data.eval_batch_size")
# Used when a task's class cannot be built from its config (e.g. a user class that is not importable here).
KNOWN_DIRECTIONS = {"accuracy": True, "macro_f1": True, "f1": True, "mae": False, "rmse": False}
SKIP_DIRS = {"checkpoints", ".hydra", "__pycache__"}
MISSING = object()


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict[str, float]  # "<task>/<metric>" on the reported split; losses left out
    choices: dict[str, str]  # Hydra group choices from .hydra/hydra.yaml ({} when the run has none)
    tasks: list[str]
    robustness: dict | None = None  # an eval run's corruption sweep (results.json "robustness")

    @property
    def seed(self):
        return self.config.get("seed")


@dataclass
class FailedJob:
    path: Path
    overrides: list[str]
    error: str  # its first line (and first listed problem)


@dataclass(eq=False)  # identity: a group is one object, compared with `is` / `in`
class Group:
    runs: list[Run]
    leaves: dict  # the flattened config that defines the group
    label: str = ""
    baseline_for: dict = field(default_factory=dict)  # task -> the baseline Group used for it
    delta: list[float] | None = None  # Δm% per run
    note: str = ""

    @property
    def tasks(self) -> list[str]:
        return self.runs[0].tasks

    @property
    def choices(self) -> dict[str, str]:
        return self.runs[0].choices

    def auxiliary(self, task: str) -> bool:
        return bool(_task_nodes(self.runs[0].config).get(task, {}).get("auxiliary", False))

    def values(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs if key in r.metrics]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------ reading runs
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


def _task_nodes(config: dict) -> dict:
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
    metrics = {}
    for key, value in raw.items():
        key_split, _, rest = key.partition("/")
        task, _, metric = rest.partition("/")
        if key_split == split and task and metric and metric != "loss":
            metrics[rest] = float(value)
    if not metrics:
        measured = sorted({k.split("/", 1)[0] for k in raw})
        return None, f"no {split} metrics (it has: {', '.join(measured) or 'none'})"
    order = list(_task_nodes(config))
    present = {k.split("/", 1)[0] for k in metrics}
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
    return Run(path, config, metrics, choices, tasks, sweep if isinstance(sweep, dict) else None), ""


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


# -------------------------------------------------------------------------------------------- grouping
def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == i or key.startswith(i + ".") for i in ignore)


def group_runs(runs: list[Run], ignore: tuple[str, ...]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        leaves = {k: v for k, v in flatten(run.config).items() if not _ignored(k, ignore)}
        key = json.dumps(leaves, sort_keys=True, default=str)
        groups.setdefault(key, Group(runs=[], leaves=leaves)).runs.append(run)
    for group in groups.values():
        seeds = [r.seed for r in group.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        if repeated:
            print(f"warning: runs with the same config and seed {', '.join(map(str, repeated))} are all "
                  f"counted: {', '.join(str(r.path) for r in group.runs if r.seed in repeated)}", file=sys.stderr)
    return list(groups.values())


def _fmt_value(value) -> str:
    if value is MISSING:
        return "(unset)"
    if isinstance(value, list):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _canon(leaves: dict, key: str) -> str:
    """A comparable form of one config value; an unset key differs from every value, null included."""
    return json.dumps(leaves[key], sort_keys=True, default=str) if key in leaves else "\0unset"


def differing_keys(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if _canon(a, k) != _canon(b, k)]


def _choice(group: Group, top: str):
    """The Hydra choice of config group `top`, or the short class name of its `_target_`."""
    if top in group.choices:
        return group.choices[top]
    target = group.leaves.get(f"{top}._target_")
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None


def difference_labels(groups: list[Group]) -> list[str]:
    """What tells the groups apart, one label each: `weighting=pcgrad`, `optim.lr=0.001`, ..."""
    if len(groups) < 2:
        return [""] * len(groups)
    keys = sorted(set().union(*(g.leaves for g in groups)))
    differing = [k for k in keys if len({_canon(g.leaves, k) for g in groups}) > 1]
    parts: list[list[str]] = [[] for _ in groups]
    chosen = {}  # top-level node -> each group's choice, where the choice differs between groups
    for top in dict.fromkeys(k.split(".", 1)[0] for k in differing):
        # a config without the node at all (e.g. `~fusion` for one modality) chose "none"
        choices = [_choice(g, top) or (None if any(k.startswith(f"{top}.") for k in g.leaves) else "none")
                   for g in groups]
        if None not in choices and len(set(choices)) > 1:
            chosen[top] = choices
            for label, choice in zip(parts, choices):
                label.append(f"{top}={choice}")
    for key in differing:
        top = key.split(".", 1)[0]
        if top in chosen:  # explained by the choice unless it also varies between groups of one choice
            by_choice: dict[str, set] = {}
            for g, c in zip(groups, chosen[top]):
                by_choice.setdefault(c, set()).add(_canon(g.leaves, key))
            if all(len(v) == 1 for v in by_choice.values()):
                continue
        for label, g in zip(parts, groups):
            label.append(f"{key}={_fmt_value(g.leaves.get(key, MISSING))}")
    labels = [" ".join(p) for p in parts]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # identical labels cannot happen for distinct configs; be safe
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def label_groups(mtl: list[Group], baselines: list[Group]) -> None:
    for group, label in zip(mtl, difference_labels(mtl)):
        group.label = label or " ".join(f"{top}={c}" for top in ("arch", "weighting")
                                        if (c := _choice(group, top))) or "all runs"
    by_task: dict[str, list[Group]] = {}
    for group in baselines:
        by_task.setdefault(" + ".join(group.tasks), []).append(group)
    for tasks, groups in by_task.items():
        kind = "STL" if len(groups[0].tasks) == 1 else "baseline"
        for group, extra in zip(groups, difference_labels(groups)):
            group.label = f"{kind} {tasks}" + (f" ({extra})" if extra else "")


# ---------------------------------------------------------------------------------- metrics and Δm%
def _build_task(config: dict, task: str):
    """The task object of a run's config (for its metric order and directions), or None."""
    node = _task_nodes(config).get(task)
    if node is None:
        return None
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        return instantiate(OmegaConf.create(node))
    except Exception:  # noqa: BLE001 - e.g. a user class not importable here: fall back on metric names
        return None


def metric_columns(groups: list[Group]) -> tuple[list[str], dict[str, bool | None]]:
    """Every `<task>/<metric>` column in task order (metric order of the task class), and its direction."""
    columns, directions = [], {}
    for group in groups:
        for task in group.tasks:
            names = sorted({k.split("/", 1)[1] for k in group.runs[0].metrics if k.split("/", 1)[0] == task})
            built = _build_task(group.runs[0].config, task)
            own = list(built.metric_names) if built is not None else []
            known = dict(built.higher_is_better) if built is not None else {}
            for metric in [m for m in own if m in names] + [m for m in names if m not in own]:
                key = f"{task}/{metric}"
                if key not in directions:
                    columns.append(key)
                    directions[key] = known.get(metric, KNOWN_DIRECTIONS.get(metric))
    return columns, directions


def match_baselines(group: Group, baselines: list[Group]) -> tuple[dict[str, Group], list[str]]:
    """For each task of `group`: the closest baseline group that has it. Notes for config mismatches."""
    matched, notes = {}, []
    outside_tasks = lambda leaves: {k: v for k, v in leaves.items() if not k.startswith("tasks.")}  # noqa: E731
    for task in group.tasks:
        candidates = [b for b in baselines if task in b.tasks and b is not group]
        if not candidates:
            continue
        distance = {b: len(differing_keys(outside_tasks(group.leaves), outside_tasks(b.leaves)))
                    for b in candidates}
        best = min(distance.values())
        closest = [b for b in candidates if distance[b] == best]
        if len(closest) > 1:
            raise UsageError(f"ambiguous baselines for task '{task}' of '{group.label}': "
                             f"{', '.join(repr(b.label) for b in closest)} are equally close to its config; "
                             f"pass the runs to compare against with --stl DIR ...")
        baseline = closest[0]
        matched[task] = baseline
        method = ("tasks.", "weighting.", "arch.")
        mismatch = [k for k in differing_keys(group.leaves, baseline.leaves) if not k.startswith(method)]
        if mismatch:
            notes.append(f"the baseline of '{group.label}' for {task} ('{baseline.label}') differs in "
                         f"{', '.join(mismatch[:6])}{' ...' if len(mismatch) > 6 else ''}")
    return matched, notes


def compute_delta(group: Group, directions: dict[str, bool | None]) -> None:
    from mtlrun.metrics import delta_m

    main = [t for t in group.tasks if not group.auxiliary(t)]
    missing = [t for t in main if t not in group.baseline_for]
    if not main:
        group.note = "every task is auxiliary"
        return
    if missing:
        group.note = f"no baseline for {', '.join(missing)}"
        return
    keys = [k for r in group.runs[:1] for k in r.metrics if k.split("/")[0] in main
            and directions.get(k) is not None]
    baseline = {k: group.baseline_for[k.split("/")[0]].mean(k) for k in keys}
    keys = [k for k in keys if baseline[k] is not None]
    if not keys:
        group.note = "the baselines share no metric with it"
        return
    higher = {k: bool(directions[k]) for k in keys}
    try:
        group.delta = [delta_m({k: r.metrics[k] for k in keys}, {k: baseline[k] for k in keys}, higher)
                       for r in group.runs if all(k in r.metrics for k in keys)]
    except ValueError as exc:
        group.delta, group.note = None, str(exc)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --------------------------------------------------------------------------------------------- outputs
def _cell(values: list[float], fmt: str) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt.lstrip('+')}}" if std is not None else "")


def _seeds(group: Group) -> str:
    numeric = lambda s: (0, s, "") if isinstance(s, int) else (1, 0, str(s))  # noqa: E731
    return ",".join(str(s) for s in sorted((r.seed for r in group.runs), key=numeric))


def column_title(key: str, directions: dict, aux_tasks: set[str]) -> str:
    arrow = {True: " ↑", False: " ↓"}.get(directions.get(key), "")
    return f"{key}{arrow}" + (" (aux)" if key.split("/")[0] in aux_tasks else "")


def render_markdown(split: str, mtl: list[Group], baselines: list[Group], columns: list[str],
                    directions: dict, aux_tasks: set[str], notes: list[str], has_delta: bool) -> str:
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    header = ["method", "seeds", *(column_title(c, directions, aux_tasks) for c in columns)]
    header += ["Δm% ↓"] if has_delta else []
    rows = []
    for group in [*mtl, *baselines]:
        row = [esc(group.label), _seeds(group)]
        for c in columns:
            task = c.split("/")[0]  # (aux) on the cell where only some groups have the task as auxiliary
            marked = group in mtl and task not in aux_tasks and task in group.tasks and group.auxiliary(task)
            row.append(_cell(group.values(c), ".4f") + (" (aux)" if marked else ""))
        if has_delta:
            row.append(_cell(group.delta, "+.2f") if group.delta else ("" if group in baselines else "-"))
        rows.append(row)
    lines = [f"# mtlrun report ({split} split)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
             *("| " + " | ".join(r) + " |" for r in rows), ""]
    lines.append("Mean ± sample std over seeds; ↑ higher is better, ↓ lower is better; (aux): auxiliary task, "
                 "not in Δm%.")
    if has_delta:
        lines += ["", "Δm% = (1/K) Σ_k (-1)^δ_k (M_k - M_stl,k) / M_stl,k × 100 over the K metrics of the "
                      "non-auxiliary tasks, δ_k = 1 where higher is better: negative means the multi-task "
                      "model beats single-task training."]
    bullets = []
    for group in mtl:
        if group.baseline_for:
            used = ", ".join(f"{t}: {b.label}" for t, b in group.baseline_for.items())
            bullets.append(f"- baselines of {esc(group.label)}: {esc(used)}")
        if group.note:
            bullets.append(f"- Δm% of {esc(group.label)}: {esc(group.note)}")
    bullets += [f"- note: {esc(n)}" for n in notes]
    lines += ["", *bullets] if bullets else []
    lines += ["", "## Runs", ""]
    for group in [*mtl, *baselines]:
        lines.append(f"- **{esc(group.label)}**: " + ", ".join(f"`{r.path}`" for r in group.runs))
    return "\n".join(lines) + "\n"


def render_failures(failed: list[FailedJob]) -> str:
    """The failed jobs, each with its overrides and the first line of its error (the rest: its error.json)."""
    if not failed:
        return ""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["", f"## Failed jobs ({len(failed)}, left out of every statistic above)", ""]
    for job in failed:
        overrides = " ".join(job.overrides) or "no overrides"
        lines.append(f"- `{job.path}` `{esc(overrides)}`: {esc(job.error)}")
    return "\n".join(lines) + "\n"


def render_csv(mtl: list[Group], baselines: list[Group], columns: list[str],
               failed: list[FailedJob] = ()) -> str:
    """One row per group, then one per failed job (kind `failed`, its overrides as method, `error`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method", "kind", "runs", "seeds", "auxiliary"]
    for c in columns:
        header += [c, f"{c} std"]
    writer.writerow([*header, "delta_m", "delta_m std", "run_dirs", "error"])
    num = lambda v: "" if v is None else f"{v:.10g}"  # noqa: E731
    for group in [*mtl, *baselines]:
        row = [group.label, "baseline" if group in baselines else "mtl", len(group.runs), _seeds(group),
               ";".join(t for t in group.tasks if group.auxiliary(t))]
        for c in columns:
            row += [num(x) for x in mean_std(group.values(c))]
        row += [num(x) for x in mean_std(group.delta or [])]
        writer.writerow([*row, ";".join(str(r.path) for r in group.runs), ""])
    for job in failed:
        writer.writerow([" ".join(job.overrides), "failed", 0, "", "", *[""] * (2 * len(columns) + 2),
                         str(job.path), job.error])
    return buf.getvalue()


def plot_report(path: Path, mtl: list[Group], baselines: list[Group], columns: list[str],
                directions: dict, aux_tasks: set[str]) -> None:
    """One panel per task (its first metric) with a bar per group and std error bars, plus Δm%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary: dict[str, str] = {}  # task -> its first metric
    for c in columns:
        primary.setdefault(c.split("/")[0], c)
    panels = [(c, [g for g in [*mtl, *baselines] if g.values(c)]) for c in primary.values()]
    if any(g.delta for g in mtl):
        panels.append(("Δm% (lower is better)", [g for g in mtl if g.delta]))
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    width = max(4.2, 0.55 * max(len(groups) for _, groups in panels) + 1.5)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.6 * nrows), squeeze=False)
    colours = {g: f"C{i % 10}" for i, g in enumerate(mtl)}
    for ax, (title, groups) in zip(axes.flat, panels):
        is_delta = title.startswith("Δm%")
        stats = [mean_std(g.delta if is_delta else g.values(title)) for g in groups]
        means = [m for m, _ in stats]
        errs = [s or 0.0 for _, s in stats]
        bars = ax.bar(range(len(groups)), means, yerr=errs, capsize=4,
                      color=[colours.get(g, "0.75") for g in groups], edgecolor="black", linewidth=0.5)
        for bar, g in zip(bars, groups):
            if g in baselines:
                bar.set_hatch("//")
        ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize=7)
        lo, hi = min(m - e for m, e in zip(means, errs)), max(m + e for m, e in zip(means, errs))
        pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 1.0
        if is_delta:
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_ylim(min(lo, 0) - pad, max(hi, 0) + pad)
        else:  # zoomed to the values: differences between methods are often a fraction of a percent
            ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
            title = column_title(title, directions, aux_tasks)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ robustness
def render_robustness(groups: list[Group], split: str, out: Path) -> str:
    """For eval runs with a corruption sweep: each group's mean curve per metric, its area under the curve
    (mean ± std over seeds), and robustness.png with one line per group. Empty when no run has a sweep."""
    swept = [g for g in groups if all(r.robustness for r in g.runs)]
    if not swept:
        return ""
    kinds = {(r.robustness.get("modality"), r.robustness.get("noise"), tuple(r.robustness.get("levels", ())))
             for g in swept for r in g.runs}
    if len(kinds) > 1:
        shown = "; ".join(f"{m} {n} {list(lv)}" for m, n, lv in sorted(kinds, key=str))
        raise UsageError(f"the runs hold different robustness sweeps ({shown}); report one sweep at a time")
    modality, noise, levels = kinds.pop()
    keys = [k for k in swept[0].runs[0].robustness.get("metrics", {})
            if k.startswith(f"{split}/") and not k.endswith("/loss")]
    lines = ["", f"## Robustness: {noise} on {modality} ({split} split)", "",
             "| method | metric | " + " | ".join(f"{v:g}" for v in levels) + " | AUC |",
             "|" + "|".join(["---"] * (len(levels) + 3)) + "|"]
    curves = {}
    for group in swept:
        curves[group.label] = {}
        for key in keys:
            runs = [r.robustness["metrics"][key] for r in group.runs if key in r.robustness.get("metrics", {})]
            if not runs:
                continue
            mean_curve = [sum(v) / len(v) for v in zip(*runs)]
            curves[group.label][key.split("/", 1)[1]] = mean_curve
            aucs = [r.robustness["auc"][key] for r in group.runs if key in r.robustness.get("auc", {})]
            lines.append(f"| {group.label.replace('|', '/')} | {key.split('/', 1)[1]} | "
                         + " | ".join(f"{v:.4f}" for v in mean_curve) + f" | {_cell(aucs, '.4f')} |")
    lines += ["", "Mean over seeds at each corruption level; AUC: area under the metric-level curve divided by "
                  "the level range (mean ± std over seeds)."]
    from mtlrun.engine.plots import plot_robustness

    plot_robustness(curves, list(levels), f"{noise} on {modality} ({split})", out / "robustness.png")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlrun report",
        description="Compare runs: mean ± std over seeds per config, per task metric, and Δm% against "
                    "single-task baselines. Writes report.md, report.csv and report.png.",
        epilog="example: mtlrun train -m experiment=stl_baselines seed=0,1,2; "
               "mtlrun train -m weighting=static seed=0,1,2; mtlrun report outputs/multirun")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="run dirs or folders holding them (searched recursively, e.g. a Hydra multirun dir)")
    p.add_argument("--stl", nargs="+", metavar="DIR", default=None,
                   help="the baseline runs for Δm%% (default: the single-task runs among DIR)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="which split's metrics to report (default: test)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write report.md/.csv/.png (default: the first DIR)")
    p.add_argument("--ignore", nargs="+", metavar="KEY", default=[],
                   help="more config keys that do not split runs into groups (e.g. data.seed)")
    return p


def report(args: argparse.Namespace) -> dict:
    ignore = (*IGNORED, *args.ignore)
    runs, failed = collect_runs(args.dirs, args.split, "DIR")
    groups = group_runs(runs, ignore)
    if args.stl:
        baseline_runs, stl_failed = collect_runs(args.stl, args.split, "--stl")
        failed = list({f.path.resolve(): f for f in [*failed, *stl_failed]}.values())
        known = {r.path.resolve() for r in baseline_runs}
        baselines = group_runs(baseline_runs, ignore)
        mtl = [g for g in groups if not all(r.path.resolve() in known for r in g.runs)]
    else:
        mtl = [g for g in groups if len(g.tasks) > 1]
        baselines = [g for g in groups if len(g.tasks) == 1]
    shared = set.intersection(*(set(r.metrics) for g in mtl for r in g.runs)) if mtl else {"-"}
    if not shared:
        have = "; ".join(f"{r.path}: {', '.join(sorted({k.split('/')[0] for k in r.metrics}))}"
                         for g in mtl for r in g.runs[:1])
        raise UsageError(f"the runs share no {args.split} metric, so they cannot be compared (tasks per "
                         f"config: {have}); report runs of the same tasks together")
    label_groups(mtl, baselines)
    columns, directions = metric_columns([*mtl, *baselines])
    notes = []
    for group in mtl if baselines else []:  # without any baseline one note below says so for all groups
        group.baseline_for, mismatch = match_baselines(group, baselines)
        notes += mismatch
        compute_delta(group, directions)
    unknown = [c for c in columns if directions[c] is None]
    if unknown:
        notes.append(f"direction unknown (left out of Δm%): {', '.join(unknown)}")
    if mtl and not baselines:
        notes.append("no single-task baselines, so no Δm%: run `mtlrun train -m experiment=stl_baselines` with "
                     "the same overrides, or pass --stl DIR")
    # (aux) in a column title where every multi-task group has the task as auxiliary, else on the cells
    having = lambda t: [g for g in (mtl or baselines) if t in g.tasks]  # noqa: E731
    aux_tasks = {c.split("/")[0] for c in columns if having(c.split("/")[0])
                 and all(g.auxiliary(c.split("/")[0]) for g in having(c.split("/")[0]))}
    has_delta = any(g.delta for g in mtl)

    out = Path(args.out if args.out is not None else args.dirs[0]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(args.split, mtl, baselines, columns, directions, aux_tasks, notes, has_delta)
    markdown += render_robustness([*mtl, *baselines], args.split, out)
    markdown += render_failures(failed)
    (out / "report.md").write_text(markdown)
    (out / "report.csv").write_text(render_csv(mtl, baselines, columns, failed))
    plot_report(out / "report.png", mtl, baselines, columns, directions, aux_tasks)
    print(markdown)
    extra = f", {out / 'robustness.png'}" if (out / "robustness.png").is_file() and "## Robustness" in markdown \
        else ""
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}{extra}")
    return {"mtl": mtl, "baselines": baselines, "columns": columns, "out": out, "failed": failed}


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    try:
        return report(args)
    except MtlrunError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
