"""report.png: every metric of every task, one panel each, plus Δm%; a group is a point at its mean over seeds
with an error bar of ± the sample std, and each seed is a small dot just below it.

Points, not bars: a bar's length claims the distance from zero, so bars on an axis that does not start at 0
exaggerate differences, while bars from 0 hide differences of a fraction of a percent. A point needs no zero,
so the value axis spans the data (every seed and error bar), and its label says "axis not from 0" whenever 0
is outside it. Groups share one axis across panels (one row each, labelled once on the left, with n = the
number of seeds); multi-task groups get one colour each, single-task baselines are grey squares."""

from __future__ import annotations

from pathlib import Path

from mtlrun.engine.plots import ARROW, BETTER, panel_grid, pyplot, save_figure
from mtlrun.report.groups import Group
from mtlrun.report.stats import mean_std

DELTA = "Δm%"
SEED_OFFSET = 0.25  # the seeds' dots sit this far (in rows) below their group's mean
SUPTITLE_BAND = 0.4  # inches kept above the panels for the figure's title
PANEL_WIDTH, LABEL_WIDTH = 3.1, 2.6  # inches: one panel, the group labels on the left of each row of panels


def _span(values: list[float], include_zero: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 1.0
    return lo - pad, hi + pad


def build_report_figure(mtl: list[Group], baselines: list[Group], columns: list[str], directions: dict,
                        aux_tasks: set[str], split: str = "test"):
    plt = pyplot()
    groups = [*mtl, *baselines]
    panels = [*columns, *([DELTA] if any(g.delta for g in mtl) else [])]
    cols = min(4, len(panels))
    fig, axes = panel_grid(plt, len(panels), width=PANEL_WIDTH, height=0.32 * len(groups) + 1.4, cols=cols)
    row_of = {g: len(groups) - 1 - i for i, g in enumerate(groups)}  # the first group on top
    colour = {g: f"C{i % 10}" for i, g in enumerate(mtl)}
    for ax, key in zip(axes, panels):
        shown = []
        for g in groups:
            values = (g.delta or []) if key == DELTA else g.values(key)
            if not values or (key == DELTA and g not in mtl):
                continue
            mean, std = mean_std(values)
            y, c = row_of[g], colour.get(g, "0.45")
            ax.plot(values, [y - SEED_OFFSET] * len(values), ".", color=c, alpha=0.7, markersize=4)  # one per seed
            ax.errorbar([mean], [y], xerr=None if std is None else [std], fmt="o" if g in colour else "s",
                        color=c, markersize=5, capsize=3, elinewidth=1.2)
            shown += [*values, mean - (std or 0.0), mean + (std or 0.0)]
        if not shown:
            continue
        lo, hi = _span(shown, include_zero=key == DELTA)
        ax.set_xlim(lo, hi)
        if key == DELTA:
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"{DELTA} {ARROW[False]} vs single-task", fontsize=9)
            ax.set_xlabel("← better than single-task (0)   worse →", fontsize=8)
        else:
            higher = directions.get(key)
            title = f"{key} {ARROW.get(higher, '')}".rstrip()
            ax.set_title(title + (" (aux)" if key.split("/")[0] in aux_tasks else ""), fontsize=9)
            note = "" if lo <= 0 <= hi else "; axis not from 0"
            ax.set_xlabel(f"{BETTER.get(higher, 'direction unknown')}{note}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    labels = [f"{g.label} (n={len(g.runs)})" for g in groups]
    for i, ax in enumerate(axes):
        ax.set_ylim(-0.7, len(groups) - 0.4)
        ax.set_yticks([row_of[g] for g in groups], labels if i % cols == 0 else [], fontsize=7)
    fig.suptitle(f"{split} split: mean ± std over seeds (point and bar), each seed a dot below", fontsize=10)
    fig.set_size_inches(fig.get_size_inches()[0] + LABEL_WIDTH, fig.get_size_inches()[1])
    # tight_layout leaves the suptitle out: keep a band of SUPTITLE_BAND inches above the panels for it
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - SUPTITLE_BAND / fig.get_size_inches()[1]))
    return fig


def plot_report(path: Path, mtl: list[Group], baselines: list[Group], columns: list[str], directions: dict,
                aux_tasks: set[str], split: str = "test") -> None:
    save_figure(build_report_figure(mtl, baselines, columns, directions, aux_tasks, split), path)
