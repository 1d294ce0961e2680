"""Statistics over groups: the metric columns and their directions, each task's single-task baseline, Δm%
per seed (mtlrun.metrics.delta_m) and mean ± sample std.

A metric written as null (nothing measured in that split, e.g. a task without labels) is missing for that
run: the mean ± std is over the runs that measured it (the report shows n), and Δm% is never computed from
a missing value. A run that lacks a measurement of any Δm% metric has no Δm% (the group's Δm% is over the
other runs, with a note); a baseline without a measurement of a metric leaves the group without Δm% (a note
says which): leaving the metric out instead would change K and make Δm% incomparable with other groups."""

from __future__ import annotations

import math

from mtlrun.errors import UsageError
from mtlrun.report.groups import Group, differing_keys
from mtlrun.report.load import task_nodes


# Used when a task's class cannot be built from its config (e.g. a user class that is not importable here).
KNOWN_DIRECTIONS = {"accuracy": True, "macro_f1": True, "f1": True, "precision": True, "recall": True, "mae": False,
                    "rmse": False}


def _build_task(config: dict, task: str):
    """The task object of a run's config (for its metric order and directions), or None. A run dir's config
    is data anyone may have edited: only a task class that mtlrun ships is built (mtlrun.trust), never what
    else a `_target_` there names (`os.makedirs`, `builtins.open` ran here before)."""
    node = task_nodes(config).get(task)
    if node is None:
        return None
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from mtlrun.trust import check_checkpoint_config

        check_checkpoint_config({"tasks": {task: node}}, (), "config.yaml")  # UsageError: not built
        return instantiate(OmegaConf.create(node))
    except Exception:  # noqa: BLE001 - e.g. a user class not importable here: fall back on metric names
        return None


def metric_columns(groups: list[Group]) -> tuple[list[str], dict[str, bool | None]]:
    """Every `<task>/<metric>` column in task order (metric order of the task class), and its direction."""
    columns, directions = [], {}
    for group in groups:
        for task in group.tasks:
            names = sorted({k.split("/", 1)[1] for k in group.keys() if k.split("/", 1)[0] == task})
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
    keys = sorted(k for k in group.keys() if k.split("/")[0] in main and directions.get(k) is not None)
    stl = {k: group.baseline_for[k.split("/")[0]] for k in keys}
    unmeasured = [k for k in keys if stl[k].mean(k) is None and stl[k].missing_runs(k)]
    if unmeasured:
        group.note = f"not computed: the baseline has no measurement of {', '.join(unmeasured)} (null)"
        return
    baseline = {k: stl[k].mean(k) for k in keys}
    keys = [k for k in keys if baseline[k] is not None]
    if not keys:
        group.note = "the baselines share no metric with it"
        return
    higher = {k: bool(directions[k]) for k in keys}
    complete = [r for r in group.runs if all(k in r.metrics for k in keys)]
    lacking = ", ".join(sorted({k for r in group.runs for k in keys if k not in r.metrics}))
    if not complete:
        group.note = f"not computed: no run has a measurement of every metric (missing: {lacking})"
        return
    if len(complete) < len(group.runs):
        group.note = f"over {len(complete)} of {len(group.runs)} runs: the others have no measurement of {lacking}"
    try:
        group.delta = [delta_m({k: r.metrics[k] for k in keys}, {k: baseline[k] for k in keys}, higher)
                       for r in complete]
        group.delta_seeds = [r.seed for r in complete]
    except ValueError as exc:
        group.delta, group.note = None, str(exc)
    if group.delta and not all(math.isfinite(d) for d in group.delta):  # a baseline metric of ~1e-300
        group.delta, group.note = None, "not computed: Δm% overflows (a baseline metric is too close to 0)"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
