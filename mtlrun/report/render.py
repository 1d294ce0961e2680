"""What the report writes: report.md (table, notes, robustness, failed jobs), report.csv and robustness.png
(report.png: figures.py)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mtlrun.errors import UsageError
from mtlrun.report.groups import Group
from mtlrun.report.load import FailedRun, SkippedRun
from mtlrun.report.stats import mean_std


def _cell(values: list[float], fmt: str) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt.lstrip('+')}}" if std is not None else "")


def _metric_cell(group: Group, key: str) -> str:
    """mean ± std of `key` over the group's runs that measured it; `(n=k)` where some runs have it null."""
    values, unmeasured = group.values(key), len(group.missing_runs(key))
    if unmeasured and not values:
        return "–"
    return _cell(values, ".4f") + (f" (n={len(values)})" if unmeasured else "")


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
            row.append(_metric_cell(group, c) + (" (aux)" if marked else ""))
        if has_delta:
            n = f" (n={len(group.delta)})" if group.delta and len(group.delta) < len(group.runs) else ""
            row.append(_cell(group.delta, "+.2f") + n if group.delta else ("" if group in baselines else "-"))
        rows.append(row)
    lines = [f"# mtlrun report ({split} split)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
             *("| " + " | ".join(r) + " |" for r in rows), ""]
    lines.append("Mean ± sample std over seeds; ↑ higher is better, ↓ lower is better; (aux): auxiliary task, "
                 "not in Δm%.")
    if any(g.missing_runs(c) for g in [*mtl, *baselines] for c in columns):
        lines.append("–: no measurement (null in results.json: the split had no label for the task); (n=k): "
                     "over the k runs that measured it.")
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


def render_failures(failed: list[FailedRun]) -> str:
    """The failed jobs, each with its overrides and the first line of its error (the rest: its error.json)."""
    if not failed:
        return ""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["", f"## Failed jobs ({len(failed)}, left out of every statistic above)", ""]
    for job in failed:
        overrides = " ".join(job.overrides) or "no overrides"
        lines.append(f"- `{job.path}` `{esc(overrides)}`: {esc(job.error)}")
    return "\n".join(lines) + "\n"


def render_skipped(skipped: list[SkippedRun]) -> str:
    """The run dirs left out: unreadable files (which file, why) or no metrics of the reported split."""
    if not skipped:
        return ""
    lines = ["", f"## Runs left out ({len(skipped)})", ""]
    lines += [f"- `{s.path}`: {s.reason.replace('|', '/')}" for s in skipped]
    return "\n".join(lines) + "\n"


def render_csv(mtl: list[Group], baselines: list[Group], columns: list[str],
               failed: list[FailedRun] = ()) -> str:
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


def render_robustness(groups: list[Group], split: str, out: Path, directions: dict | None = None) -> str:
    """For eval runs with a corruption sweep: each group's mean curve per metric, its area under the curve
    (mean ± std over seeds), and robustness.png with one line per group (error bars: the std over seeds).
    Empty when no run has a sweep. `directions`: {task/metric: higher is better}, for the axis labels."""
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
            mean_curve = [math.nan if None in v else sum(v) / len(v) for v in zip(*runs)]  # null: missing
            curves[group.label][key.split("/", 1)[1]] = runs
            aucs = [r.robustness["auc"][key] for r in group.runs if r.robustness.get("auc", {}).get(key) is not None]
            lines.append(f"| {group.label.replace('|', '/')} | {key.split('/', 1)[1]} | "
                         + " | ".join("–" if math.isnan(v) else f"{v:.4f}" for v in mean_curve)
                         + f" | {_cell(aucs, '.4f')} |")
    lines += ["", "Mean over seeds at each corruption level; AUC: area under the metric-level curve divided by "
                  "the level range (mean ± std over seeds)."]
    from mtlrun.engine.plots import plot_robustness

    plot_robustness(curves, list(levels), f"{noise} on {modality} ({split})", out / "robustness.png", directions,
                    xlabel=f"{noise} level on {modality}")
    return "\n".join(lines) + "\n"
