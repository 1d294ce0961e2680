"""The Pareto view: two task metrics of every multi-task group, as points with seed error bars, with the
groups no other group beats on both (the Pareto front) marked."""

from __future__ import annotations

from pathlib import Path

from mtlrun.engine.plots import save_figure
from mtlrun.errors import UsageError
from mtlrun.report.groups import Group
from mtlrun.report.stats import mean_std


def pareto_front(points: list[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """Indices of the points that no other point dominates (at least as good on both, better on one)."""
    signed = [(x if higher[0] else -x, y if higher[1] else -y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(signed):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(signed) if j != i)
        if not dominated:
            front.append(i)
    return front


def pareto_keys(requested: list[str] | None, columns: list[str], directions: dict, mtl: list[Group]) -> list[str]:
    """The two metric columns of the view: `--pareto X Y`, or by default the first metrics of the first two main
    tasks when the groups have exactly two main tasks ([] where there is no such default)."""
    if requested:
        unknown = [k for k in requested if k not in columns]
        if unknown:
            raise UsageError(f"--pareto {' '.join(requested)}: {', '.join(unknown)} is not a metric of the runs; "
                             f"valid: {', '.join(columns)}")
        undirected = [k for k in requested if directions.get(k) is None]
        if undirected:
            raise UsageError(f"--pareto: the direction of {', '.join(undirected)} is unknown, so no front")
        return list(requested)
    main = sorted({t for g in mtl for t in g.tasks if not g.auxiliary(t)})
    if len(main) != 2:
        return []
    firsts = [next((c for c in columns if c.split("/")[0] == t and directions.get(c) is not None), None)
              for t in main]
    return firsts if all(firsts) else []


def render_pareto(mtl: list[Group], keys: list[str], directions: dict, out: Path) -> str:
    """pareto.png and a markdown section listing the front."""
    groups = [g for g in mtl if g.values(keys[0]) and g.values(keys[1])]
    if len(groups) < 2:
        return ""
    stats = [(mean_std(g.values(keys[0])), mean_std(g.values(keys[1]))) for g in groups]
    points = [(sx[0], sy[0]) for sx, sy in stats]
    higher = (bool(directions[keys[0]]), bool(directions[keys[1]]))
    front = pareto_front(points, higher)
    _plot(out / "pareto.png", groups, stats, front, keys, higher)
    arrow = lambda k: "↑" if directions[k] else "↓"  # noqa: E731
    lines = ["", f"## Pareto front: {keys[0]} {arrow(keys[0])} vs {keys[1]} {arrow(keys[1])}", "",
             "On the front (no other method is at least as good on both and better on one, by the means over "
             "seeds):", ""]
    lines += [f"- {groups[i].label}: {points[i][0]:.4f}, {points[i][1]:.4f}" for i in front]
    dominated = [g.label for i, g in enumerate(groups) if i not in front]
    if dominated:
        lines += ["", f"Dominated: {', '.join(dominated)}."]
    lines += ["", "pareto.png: each method as a point with ± std over seeds on both axes; the front is joined."]
    return "\n".join(lines) + "\n"


def _plot(path: Path, groups: list[Group], stats, front: list[int], keys: list[str], higher) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for i, (group, ((mx, sx), (my, sy))) in enumerate(zip(groups, stats)):
        on_front = i in front
        ax.errorbar(mx, my, xerr=sx or 0.0, yerr=sy or 0.0, fmt="o" if on_front else "s", capsize=3,
                    color=f"C{i % 10}", markersize=7 if on_front else 5, markeredgecolor="black",
                    label=f"{group.label}{' (front)' if on_front else ''}")
    ordered = sorted(front, key=lambda i: stats[i][0][0])
    ax.plot([stats[i][0][0] for i in ordered], [stats[i][1][0] for i in ordered], "k--", linewidth=1,
            label="Pareto front")
    ax.set_xlabel(f"{keys[0]} ({'higher' if higher[0] else 'lower'} is better)")
    ax.set_ylabel(f"{keys[1]} ({'higher' if higher[1] else 'lower'} is better)")
    ax.set_title("methods on two task metrics (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomic: a full disk is a WriteError, never half a PNG
