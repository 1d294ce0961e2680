"""Is a method's difference from a reference method (e.g. `weighting=static`) more than seed noise?

For every metric column and Δm%, the runs of a group and of the reference are paired by seed (the seeds both
have); the difference of the means over those seeds is tested with a two-sided paired t-test (scipy's
`ttest_rel`), which removes the part of the seed-to-seed spread both methods share (the same data order and
initial weights). Δm%'s confidence interval is the t-interval of its mean over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtlrun.errors import UsageError
from mtlrun.report.groups import Group

ALPHA = 0.05


@dataclass
class Comparison:
    n: int  # seeds both groups have
    difference: float  # mean over those seeds of (group - reference)
    p_value: float | None  # None with fewer than 2 seeds, or no spread in the differences


def paired_test(values: dict, reference: dict) -> Comparison | None:
    """`values`, `reference`: {seed: value}. None when they share no seed."""
    seeds = sorted(set(values) & set(reference), key=str)
    if not seeds:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    if len(seeds) < 2 or all(d == diffs[0] for d in diffs):
        return Comparison(len(seeds), mean, None if len(seeds) < 2 else (1.0 if mean == 0 else 0.0))
    from scipy.stats import ttest_rel

    p = float(ttest_rel([values[s] for s in seeds], [reference[s] for s in seeds]).pvalue)
    return Comparison(len(seeds), mean, p)


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t-interval of the mean; None with fewer than 2 values."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def by_seed(group: Group, key: str) -> dict:
    """{seed: value} of one metric column, or of Δm% with key `delta`."""
    if key == "delta":
        return dict(zip(group.delta_seeds, group.delta or []))
    return {r.seed: r.metrics[key] for r in group.runs if key in r.metrics}


def find_reference(groups: list[Group], label: str | None) -> Group | None:
    """The group `--reference LABEL` names; by default `weighting=static` where there is one."""
    if label is None:
        return next((g for g in groups if g.label == "weighting=static"), None)
    for group in groups:
        if group.label == label:
            return group
    raise UsageError(f"--reference {label}: no group has that label; the groups are: "
                     f"{', '.join(g.label for g in groups)}")


def render_significance(mtl: list[Group], reference: Group, columns: list[str], directions: dict) -> str:
    """A markdown section: per group and column, the paired difference from the reference and its p-value."""
    keys = [*columns, *(["delta"] if any(g.delta for g in mtl) else [])]
    title = {"delta": "Δm%"}
    header = ["method", *(title.get(k, k) for k in keys)]
    rows = []
    for group in mtl:
        if group is reference:
            continue
        cells = [group.label.replace("|", "\\|")]
        for key in keys:
            result = paired_test(by_seed(group, key), by_seed(reference, key))
            if result is None:
                cells.append("-")
                continue
            p = "n/a" if result.p_value is None else f"{result.p_value:.3f}"
            star = "*" if result.p_value is not None and result.p_value < ALPHA else ""
            cells.append(f"{result.difference:+.4f} (p={p}, n={result.n}){star}")
        rows.append(cells)
    if not rows:
        return ""
    lines = ["", f"## Against {reference.label} (paired by seed)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
             *("| " + " | ".join(r) + " |" for r in rows), "",
             f"Each cell: mean over the shared seeds of (method - {reference.label}), the two-sided paired "
             f"t-test's p-value and the number of seeds; * p < {ALPHA}. Whether a difference is good follows the "
             f"column's direction (Δm%: lower is better). With few seeds and many cells some * are chance: "
             f"at p < {ALPHA}, about one in {round(1 / ALPHA)} tests of equal methods."]
    cis = []
    for group in mtl:
        interval = confidence_interval(group.delta or [])
        if interval is not None:
            cis.append(f"- Δm% of {group.label}: 95% CI [{interval[0]:+.2f}, {interval[1]:+.2f}] "
                       f"over {len(group.delta)} seeds")
    return "\n".join(lines + (["", *cis] if cis else [])) + "\n"
