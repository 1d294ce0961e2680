"""curves.png: per-task loss and metric curves from the run's metrics history."""

from __future__ import annotations

import io
import os

from mtlrun.engine.records import atomic_write_bytes


def _save(fig, path: str | os.PathLike) -> None:
    """Rendered in memory, then written atomically: a full disk is a WriteError, never half a PNG."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(rows: list[dict], tasks: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    metric_keys = [f"{t}/{m}" for t, task in tasks.items() for m in task.metric_names]
    has_weights = any(f"{t}/weight" in r for r in rows for t in tasks)
    panels = ["loss", *(["weight"] if has_weights else []), *metric_keys]
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for split, style in (("train", "-"), ("val", "--")):
            split_rows = [r for r in rows if r.get("split") == split]
            keys = [f"{t}/{panel}" for t in tasks] if panel in ("loss", "weight") else [panel]
            for key in keys:
                points = [(r["epoch"], r[key]) for r in split_rows if isinstance(r.get(key), (int, float))]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, marker="o", markersize=3, label=f"{split} {key}")
        ax.set_title("task weights (epoch mean)" if panel == "weight" else panel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def plot_robustness(curves: dict[str, dict[str, list[float]]], levels: list[float], title: str,
                    path: str | os.PathLike) -> None:
    """One panel per metric, one line per run: metric against corruption level.

    `curves`: {label: {metric key: [value at each level]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for run in curves.values() for k in run))
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, run in curves.items():
            if key in run:
                ax.plot(levels, run[key], marker="o", markersize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("corruption level")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
