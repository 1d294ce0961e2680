"""Group runs by their config (seed and the IGNORED keys aside) and label each group by what tells it apart
from the others: the Hydra choice where a whole config group differs (`weighting=pcgrad`), else `key=value`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from mtlrun.report.load import Run, task_nodes


# Keys that never change what a run trains or measures: they do not split runs into groups.
IGNORED = ("seed", "resume", "checkpoint", "split", "trainer.device", "trainer.progress_bar",
           "trainer.log_every_n_steps", "trainer.compile", "trainer.deterministic", "data.num_workers",
           "data.pin_memory", "data.eval_batch_size", "data.persistent_workers", "trainer.channels_last")
MISSING = object()


@dataclass(eq=False)  # identity: a group is one object, compared with `is` / `in`
class Group:
    runs: list[Run]
    leaves: dict  # the flattened config that defines the group
    label: str = ""
    baseline_for: dict = field(default_factory=dict)  # task -> the baseline Group used for it
    delta: list[float] | None = None  # Δm% per run
    delta_seeds: list = field(default_factory=list)  # the seed of each Δm% value
    note: str = ""

    @property
    def tasks(self) -> list[str]:
        return self.runs[0].tasks

    @property
    def choices(self) -> dict[str, str]:
        return self.runs[0].choices

    def auxiliary(self, task: str) -> bool:
        return bool(task_nodes(self.runs[0].config).get(task, {}).get("auxiliary", False))

    def values(self, key: str) -> list[float]:
        """The runs' values of `key`; a run whose value is null (nothing measured) is left out."""
        return [r.metrics[key] for r in self.runs if key in r.metrics]

    def keys(self) -> set[str]:
        """Every `<task>/<metric>` of the group's runs, measured or null."""
        return {k for r in self.runs for k in [*r.metrics, *r.missing]}

    def missing_runs(self, key: str) -> list[Run]:
        return [r for r in self.runs if key in r.missing]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return sum(values) / len(values) if values else None


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
