"""curves.png (a run's loss, metric, task-weight, gradient-conflict and learning-rate curves) and
robustness.png (metrics against corruption level). Each picture is built by a `build_*_figure` function that
returns the matplotlib Figure (the tests read its axes, lines and containers instead of pixels) and saved by a
`plot_*` function.

matplotlib is imported inside the functions: importing mtlrun (every CLI start-up) never pays for it."""

from __future__ import annotations

import io
import os

from mtlrun.engine.records import atomic_write_bytes

ARROW = {True: "↑", False: "↓"}
BETTER = {True: "higher is better", False: "lower is better"}
DODGE = 0.02  # robustness.png: how far apart (a fraction of the level range) the groups' points are drawn
WEIGHT_TOLERANCE = 1e-9  # a task weight that moves less than this over the run is constant


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """Rendered in memory, then written atomically: a full disk is a WriteError, never half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def panel_grid(plt, n: int, width: float = 4.2, height: float = 3.2, cols: int | None = None):
    cols = cols or (2 if n == 4 else min(3, n))
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in rows
              if r.get("split") == split and isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    return tuple(list(xs) for xs in zip(*points)) if points else ([], [])


def _task_weights(rows: list[dict], tasks: dict) -> dict[str, list[float]]:
    return {t: _series(rows, "train", f"{t}/weight")[1] for t in tasks}


def _weights_vary(weights: dict[str, list[float]]) -> bool:
    return any(ys and max(ys) - min(ys) > WEIGHT_TOLERANCE for ys in weights.values())


def _loss_scale(ax, values: list[float]) -> str:
    """Log scale, since losses fall by orders of magnitude; a loss <= 0 (an NLL can be negative) has no
    logarithm, so then symlog: logarithmic above the smallest positive magnitude, linear through zero."""
    if not values:
        return " (no epoch finished)"
    if min(values) > 0:
        ax.set_yscale("log")
        return ""
    positive = [abs(v) for v in values if v != 0]
    ax.set_yscale("symlog", linthresh=min(positive) if positive else 1.0)
    return " (symlog: a loss ≤ 0)"


def build_curves_figure(rows: list[dict], tasks: dict, best_epoch: int | None = None):
    """Panels: every task's loss (log scale; train dashed, val solid), each task's first metric on val (and
    train where logged), the task weights only when one of them changes, gradient conflict (pair cosines,
    conflicting fraction) and gradient-norm ratios when trainer.conflict=true logged them, and the learning rate.
    One colour per task in every panel; a dotted vertical line at the best epoch (the checkpoint the results come from)."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    colour = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    weights = _task_weights(rows, tasks)
    varying = _weights_vary(weights)
    lrs = _series(rows, "train", "lr")
    cosines = _conflict_pairs(rows, tasks)
    panels = ["loss", *(f"metric:{t}" for t in tasks if tasks[t].metric_names), *(["weight"] if varying else []),
              *(["conflict", "norms"] if cosines else []), *(["lr"] if lrs[0] else [])]
    fig, axes = panel_grid(plt, len(panels))
    best = f"best epoch {best_epoch}"
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            values = []
            for t in tasks:
                for split, style in (("train", "--"), ("val", "-")):
                    xs, ys = _series(rows, split, f"{t}/loss")
                    if not xs:
                        continue
                    ax.plot(xs, ys, style, color=colour[t], marker="o", markersize=3, label=f"{t} {split}")
                    values += ys
            note = _loss_scale(ax, values)
            ax.set_title("loss per task" + note)
            ax.set_ylabel("loss (log scale)" if not note else "loss")
            constant = {t: ys[0] for t, ys in weights.items() if ys} if not varying else {}
            shown = lambda t: f"{t} (weight {constant[t]:g})" if t in constant and constant[t] != 1 else t  # noqa: E731
            handles = [Line2D([], [], color=colour[t], label=shown(t)) for t in tasks]
            handles += [Line2D([], [], color="black", linestyle="--", label="train"),
                        Line2D([], [], color="black", linestyle="-", label="val")]
            if best_epoch is not None:
                handles.append(Line2D([], [], color="0.4", linestyle=":", label=best))
            ax.legend(handles=handles, fontsize=7)
        elif panel.startswith("metric:"):
            t = panel.split(":", 1)[1]
            metric = tasks[t].metric_names[0]
            higher = tasks[t].higher_is_better.get(metric)
            for split, style in (("train", "--"), ("val", "-")):
                xs, ys = _series(rows, split, f"{t}/{metric}")
                if not xs:
                    continue
                ax.plot(xs, ys, style, color=colour[t], marker="o", markersize=3, label=f"{split}")
                if split == "val" and best_epoch in xs:
                    ax.plot([best_epoch], [ys[xs.index(best_epoch)]], "*", color=colour[t], markersize=11,
                            markeredgecolor="black", label=f"{best}: {ys[xs.index(best_epoch)]:.4g}")
            ax.set_title(f"{t}/{metric} {ARROW.get(higher, '')}".rstrip())
            ax.set_ylabel(f"{metric} ({BETTER[higher]})" if higher is not None else metric)
            if ax.lines:
                ax.legend(fontsize=7)
        elif panel == "weight":
            for t, ys in weights.items():
                ax.plot(_series(rows, "train", f"{t}/weight")[0], ys, "--", color=colour[t], marker="o",
                        markersize=3, label=t)
            ax.set_title("task weights (train, epoch mean)")
            ax.set_ylabel("weight")
            ax.legend(fontsize=7)
        elif panel == "conflict":
            _draw_conflict(ax, rows, cosines)
        elif panel == "norms":
            _draw_norms(ax, rows, tasks, colour)
        else:
            ax.plot(*lrs, "--", color="black", marker="o", markersize=3)
            ax.set_title("learning rate (train, end of epoch)")
            ax.set_ylabel("lr")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", linestyle=":", linewidth=1.2, label="_best epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _margins(fig)
    return fig


def _conflict_pairs(rows: list[dict], tasks: dict) -> list[tuple[str, str]]:
    """The task pairs whose gradient cosine trainer.conflict=true logged (conflict/cos/a~b in train rows)."""
    logged = {k for r in rows if r.get("split") == "train" for k in r if k.startswith("conflict/cos/")}
    names = list(tasks)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if f"conflict/cos/{a}~{b}" in logged]


def _draw_conflict(ax, rows: list[dict], pairs: list[tuple[str, str]]) -> None:
    """trainer.conflict=true: each pair's gradient cosine at the shared representation (epoch mean; < 0 means a
    step for one task raises the other's loss), on an axis fitted to them (cosines of batch-flattened gradients
    are often within ±0.1) and always showing 0; in black on the right axis, the fraction of conflicting pairs."""
    for i, (a, b) in enumerate(pairs):
        ax.plot(*_series(rows, "train", f"conflict/cos/{a}~{b}"), color=f"C{i % 10}",
                linestyle=("-", "--", ":", "-.")[i // 10 % 4], marker="o", markersize=2, linewidth=1, label=f"{a}~{b}")
    ax.axhline(0.0, color="0.5", linewidth=0.8, label="_zero")
    ax.set_title("gradient conflict (train, shared repr.)")
    ax.set_ylabel("cosine per pair (< 0: conflict)")
    xs, ys = _series(rows, "train", "conflict/fraction")
    if xs:
        fraction = ax.twinx()
        fraction.plot(xs, ys, "-", color="black", linewidth=2.2, label="fraction of pairs < 0 (right axis)")
        fraction.set_ylim(-0.02, 1.02)  # no axis label: it would run into the next panel's; the legend says it
        fraction.legend(fontsize=6, loc="upper right")
    ax.legend(fontsize=5.5, ncol=2 if len(pairs) > 5 else 1)


def _draw_norms(ax, rows: list[dict], tasks: dict, colour: dict) -> None:
    """Each task's gradient norm over the mean of all tasks: which task dominates the shared update."""
    values = []
    for t in tasks:
        xs, ys = _series(rows, "train", f"conflict/norm/{t}")
        if xs:
            ax.plot(xs, ys, "-", color=colour[t], marker="o", markersize=3, label=t)
            values += ys
    if values and min(values) > 0:
        ax.set_yscale("log")  # one task's gradient is often orders of magnitude above the others'
    ax.axhline(1.0, color="0.5", linewidth=0.8, label="_mean")
    ax.set_title("gradient norm / mean over tasks")
    ax.set_ylabel("norm ratio" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.legend(fontsize=7)


def _margins(fig, left: float = 0.75, right: float = 0.15, top: float = 0.35, bottom: float = 0.55) -> None:
    """Fixed margins in inches instead of tight_layout, which draws the whole figure once more to measure it
    (half the time curves.png takes); the panels' labels are short enough to fit these."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=0.3, hspace=0.5)


def plot_curves(rows: list[dict], tasks: dict, path: str | os.PathLike, best_epoch: int | None = None) -> None:
    save_figure(build_curves_figure(rows, tasks, best_epoch), path)


def _mean_std(curves: list[list[float]]) -> tuple[list[float], list[float] | None]:
    n = len(curves)
    means = [sum(v) / n for v in zip(*curves)]
    if n < 2:
        return means, None
    return means, [(sum((x - m) ** 2 for x in v) / (n - 1)) ** 0.5 for v, m in zip(zip(*curves), means)]


def build_robustness_figure(curves: dict[str, dict[str, list[list[float]]]], levels: list[float], title: str,
                            directions: dict[str, bool | None] | None = None, xlabel: str = "corruption level"):
    """One panel per metric, one line per run or group: the mean over its seeds at each corruption level,
    error bars ± the sample std over seeds (none for a single seed; n in the legend). The metric's direction
    is in the panel title (↑/↓) and the axis label.

    `curves`: {label: {metric key: [one curve per seed: the value at each level]}};
    `directions`: {metric key: True (higher is better) / False / None (unknown)}."""
    plt = pyplot()
    directions = directions or {}
    keys = list(dict.fromkeys(k for run in curves.values() for k in run))
    fig, axes = panel_grid(plt, len(keys))
    # each line nudged sideways by up to DODGE of the level range, so equal curves do not hide each other
    step = DODGE * ((levels[-1] - levels[0]) or 1.0) / max(1, len(curves) - 1)
    for ax, key in zip(axes, keys):
        for i, (label, run) in enumerate(curves.items()):
            if not run.get(key):
                continue
            means, stds = _mean_std(run[key])
            shift = (i - (len(curves) - 1) / 2) * step
            ax.errorbar([v + shift for v in levels], means, yerr=stds, color=f"C{i % 10}", marker="o",
                        markersize=3, capsize=3, label=f"{label} (n={len(run[key])})")
        higher = directions.get(key)
        ax.set_title(f"{key} {ARROW.get(higher, '')}".rstrip())
        ax.set_ylabel(f"{key.rsplit('/', 1)[-1]} ({BETTER[higher]})" if higher is not None else key)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    dodged = f"; groups drawn up to {DODGE * 100:g}% of the level range apart" if len(curves) > 1 else ""
    single = all(len(c) == 1 for run in curves.values() for c in run.values())
    fig.suptitle(f"{title}: one run each, no spread over seeds" if single else
                 f"{title}: mean ± std over seeds{dodged}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_robustness(curves: dict[str, dict[str, list[list[float]]]], levels: list[float], title: str,
                    path: str | os.PathLike, directions: dict[str, bool | None] | None = None,
                    xlabel: str = "corruption level") -> None:
    save_figure(build_robustness_figure(curves, levels, title, directions, xlabel), path)
