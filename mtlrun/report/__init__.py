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

Modules: load (find and read run dirs) -> groups (group runs, label groups) -> stats (metric columns,
baselines, Δm%) -> render (report.md, report.csv, robustness.png) and figures (report.png); this one is the
command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtlrun.engine.records import atomic_write_text, file_in_the_way, writable_folder
from mtlrun.errors import MtlrunError, UsageError, exit_on
from mtlrun.report.groups import IGNORED, group_runs, label_groups
from mtlrun.report.load import collect_runs
from mtlrun.report.figures import plot_report
from mtlrun.report.pareto import pareto_keys, render_pareto
from mtlrun.report.render import (render_csv, render_failures, render_markdown, render_robustness,
                                  render_skipped)
from mtlrun.report.significance import find_reference, render_significance
from mtlrun.report.stats import compute_delta, match_baselines, metric_columns


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
    p.add_argument("--reference", metavar="LABEL", default=None,
                   help="the method the others are tested against, paired by seed (default: weighting=static "
                        "where the runs have it)")
    p.add_argument("--pareto", nargs=2, metavar=("X", "Y"), default=None,
                   help="two metric columns (e.g. left/accuracy sum/mae) for pareto.png and the Pareto front "
                        "(default: the first metrics of the two tasks, when the runs have exactly two)")
    return p


def report(args: argparse.Namespace) -> dict:
    ignore = (*IGNORED, *args.ignore)
    _out_folder(args)  # a file given as --out: said before the runs are read
    runs, failed, skipped = collect_runs(args.dirs, args.split, "DIR")
    groups = group_runs(runs, ignore)
    if args.stl:
        baseline_runs, stl_failed, stl_skipped = collect_runs(args.stl, args.split, "--stl")
        failed = list({f.path.resolve(): f for f in [*failed, *stl_failed]}.values())
        skipped = list({s.path.resolve(): s for s in [*skipped, *stl_skipped]}.values())
        known = {r.path.resolve() for r in baseline_runs}
        baselines = group_runs(baseline_runs, ignore)
        mtl = [g for g in groups if not all(r.path.resolve() in known for r in g.runs)]
    else:
        mtl = [g for g in groups if len(g.tasks) > 1]
        baselines = [g for g in groups if len(g.tasks) == 1]
    shared = set.intersection(*(set(r.metrics) | r.missing for g in mtl for r in g.runs)) if mtl else {"-"}
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

    out = writable_folder(_out_folder(args))  # a read-only or full folder: exit 1 naming it, before any file
    markdown = render_markdown(args.split, mtl, baselines, columns, directions, aux_tasks, notes, has_delta)
    reference = find_reference(mtl, args.reference)
    if reference is not None:
        markdown += render_significance(mtl, reference, columns, directions)
    axes = pareto_keys(args.pareto, columns, directions, mtl)
    if axes:
        markdown += render_pareto(mtl, axes, directions, out)
    markdown += render_robustness([*mtl, *baselines], args.split, out, directions)
    markdown += render_failures(failed)
    markdown += render_skipped(skipped)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.csv", render_csv(mtl, baselines, columns, failed))
    plot_report(out / "report.png", mtl, baselines, columns, directions, aux_tasks, args.split)
    print(markdown)
    extra = f", {out / 'robustness.png'}" if (out / "robustness.png").is_file() and "## Robustness" in markdown \
        else ""
    if axes and "## Pareto front" in markdown:
        extra += f", {out / 'pareto.png'}"
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}{extra}")
    return {"mtl": mtl, "baselines": baselines, "columns": columns, "out": out, "failed": failed}


def _out_folder(args: argparse.Namespace) -> Path:
    """--out, or the first DIR (collect_runs has read it); a UsageError where --out is a file (or under one)."""
    if args.out is None:
        return Path(args.dirs[0]).expanduser()
    problem = file_in_the_way("--out", Path(args.out).expanduser())
    if problem:
        raise UsageError(problem)
    return Path(args.out).expanduser()


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    try:
        return report(args)
    except MtlrunError as exc:
        exit_on(exc)
