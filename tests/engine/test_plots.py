"""curves.png and robustness.png, read from the matplotlib Figure the plot functions build (axes, lines,
scales, containers), not from pixels."""

from __future__ import annotations

import pytest

from mtlrun.engine.plots import build_curves_figure, build_robustness_figure, plot_curves
from mtlrun.tasks import Classification, Regression

TASKS = {"left": Classification(num_classes=10), "ink": Regression(dim=1)}


def history(epochs: int = 5, weights=lambda t, e: 1.0, loss=lambda i, e: 2.0 / (e + i)) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        train = {"epoch": e, "split": "train", "step": 4 * e, "lr": 0.01 / e}
        val = {"epoch": e, "split": "val", "step": 4 * e, "monitor": 0.1 * e}
        for i, t in enumerate(TASKS):
            train[f"{t}/loss"], val[f"{t}/loss"] = loss(i, e), loss(i, e) * 1.1
            train[f"{t}/weight"] = weights(t, e)
        val["left/accuracy"], val["left/macro_f1"] = 0.5 + 0.05 * e, 0.4 + 0.05 * e
        val["ink/mae"], val["ink/rmse"] = 1.0 / e, 1.2 / e
        rows += [train, val]
    return rows


def panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.axison}


def data_lines(ax):
    """The plotted curves: not the best-epoch marker line, not legend proxies."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_") and len(ln.get_xdata()) > 1]


@pytest.fixture
def figures():
    import matplotlib.pyplot as plt

    made = []
    yield made
    for fig in made:
        plt.close(fig)


def test_curves_loss_log_scale_one_colour_per_task_train_dashed_val_solid(figures):
    fig = build_curves_figure(history(), TASKS, best_epoch=3)
    figures.append(fig)
    loss = panels(fig)["loss per task"]
    assert loss.get_yscale() == "log"
    lines = {ln.get_label(): ln for ln in data_lines(loss)}
    assert set(lines) == {"left train", "left val", "ink train", "ink val"}
    for t in TASKS:
        assert lines[f"{t} train"].get_color() == lines[f"{t} val"].get_color()
        assert (lines[f"{t} train"].get_linestyle(), lines[f"{t} val"].get_linestyle()) == ("--", "-")
    assert lines["left val"].get_color() != lines["ink val"].get_color()
    assert list(lines["ink val"].get_ydata()) == pytest.approx([1.1 * 2.0 / (e + 1) for e in range(1, 6)])
    # the same task colour on its metric panel
    metric = panels(fig)["left/accuracy ↑"]
    assert {ln.get_color() for ln in data_lines(metric)} == {lines["left val"].get_color()}
    assert "higher is better" in metric.get_ylabel()
    assert "lower is better" in panels(fig)["ink/mae ↓"].get_ylabel()


def test_curves_best_epoch_marked_and_integer_epoch_ticks(figures):
    fig = build_curves_figure(history(epochs=3), TASKS, best_epoch=2)  # 3 epochs: the default ticks are halves
    figures.append(fig)
    for title, ax in panels(fig).items():
        marks = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [2, 2]]
        assert marks, f"no best-epoch line on {title}"
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (title, ticks)
    star = [ln for ln in panels(fig)["left/accuracy ↑"].get_lines() if ln.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [2]
    assert list(star[0].get_ydata()) == pytest.approx([0.5 + 0.05 * 2])
    legend = [t.get_text() for t in panels(fig)["loss per task"].get_legend().get_texts()]
    assert "best epoch 2" in legend and "train" in legend and "val" in legend


def test_curves_weight_panel_only_when_a_weight_changes_and_lr_panel(figures):
    constant = build_curves_figure(history(weights=lambda t, e: 0.5 if t == "ink" else 1.0), TASKS)
    moving = build_curves_figure(history(weights=lambda t, e: 1.0 + 0.1 * e * (t == "ink")), TASKS)
    tiny = build_curves_figure(history(weights=lambda t, e: 1.0 + 1e-12 * e), TASKS)  # float noise only
    figures += [constant, moving, tiny]
    weight_title = "task weights (train, epoch mean)"
    assert weight_title not in panels(constant) and weight_title not in panels(tiny)
    assert weight_title in panels(moving)
    ink = next(ln for ln in data_lines(panels(moving)[weight_title]) if ln.get_label() == "ink")
    assert list(ink.get_ydata()) == pytest.approx([1.0 + 0.1 * e for e in range(1, 6)])
    # a constant weight other than 1 is named in the legend instead
    assert "ink (weight 0.5)" in [t.get_text() for t in panels(constant)["loss per task"].get_legend().get_texts()]
    for fig in (constant, moving):
        lr = panels(fig)["learning rate (train, end of epoch)"]
        assert list(lr.get_lines()[0].get_ydata()) == pytest.approx([0.01 / e for e in range(1, 6)])
    assert len(panels(constant)) == 1 + 2 + 1 and len(panels(moving)) == 1 + 2 + 1 + 1


def test_curves_non_positive_loss_falls_back_to_symlog(figures):
    fig = build_curves_figure(history(loss=lambda i, e: 1.0 - 0.3 * e), TASKS)  # reaches -0.5
    figures.append(fig)
    (title,) = [t for t in panels(fig) if t.startswith("loss per task")]
    assert panels(fig)[title].get_yscale() == "symlog" and "a loss ≤ 0" in title


def test_curves_of_a_run_with_no_finished_epoch(figures):
    fig = build_curves_figure([], TASKS)
    figures.append(fig)
    assert "loss per task (no epoch finished)" in panels(fig)


def test_plot_curves_writes_a_png(tmp_path):
    plot_curves(history(epochs=1), TASKS, tmp_path / "curves.png", best_epoch=1)  # one point per curve
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_robustness_seed_spread_and_direction(figures):
    levels = [0.0, 0.5, 1.0]
    curves = {"dropout": {"digit/accuracy": [[0.9, 0.8, 0.6], [0.92, 0.78, 0.64]], "ink/mae": [[0.2, 0.3, 0.5]]},
              "plain": {"digit/accuracy": [[0.9, 0.7, 0.5], [0.9, 0.7, 0.5], [0.9, 0.7, 0.5]]}}
    fig = build_robustness_figure(curves, levels, "gaussian on image", {"digit/accuracy": True, "ink/mae": False})
    figures.append(fig)
    acc, mae = panels(fig)["digit/accuracy ↑"], panels(fig)["ink/mae ↓"]
    assert "higher is better" in acc.get_ylabel() and "lower is better" in mae.get_ylabel()
    dropout, plain = acc.containers
    line, _, (bars,) = dropout.lines
    assert list(line.get_ydata()) == pytest.approx([0.91, 0.79, 0.62])
    # each error bar spans mean ± the sample std of the two seeds: |a - b| / sqrt(2)
    segments = bars.get_segments()
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([2 * 0.02 / 2 ** 0.5, 2 * 0.02 / 2 ** 0.5,
                                                                    2 * 0.04 / 2 ** 0.5])
    assert plain.lines[2] == () or all(s[1][1] == pytest.approx(s[0][1]) for s in plain.lines[2][0].get_segments())
    labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert labels == ["dropout (n=2)", "plain (n=3)"]
    (single,) = mae.containers  # one seed: no error bar
    assert single.lines[2] == ()
    # the groups are drawn side by side, never more than 2 % of the level range from their level
    assert fig._suptitle.get_text().endswith("mean ± std over seeds; groups drawn up to 2% of the level range apart")
    one = build_robustness_figure({"model": {"ink/mae": [[0.2, 0.3, 0.5]]}}, levels, "image: gaussian")
    figures.append(one)
    assert one._suptitle.get_text() == "image: gaussian: one run each, no spread over seeds"
    assert panels(one)["ink/mae"].get_ylabel() == "ink/mae"  # direction unknown: no arrow, no claim
    xs = [list(c.lines[0].get_xdata()) for c in acc.containers]
    assert xs[0] != xs[1] and all(abs(x - lv) <= 0.02 for curve in xs for x, lv in zip(curve, levels))


def test_curves_conflict_panels_only_when_logged(figures):
    """trainer.conflict=true rows: a panel of pair cosines with the conflicting fraction in black, and one of
    gradient-norm ratios in the task colours (log scale); without those columns neither panel exists."""
    rows = history()
    for r in rows:
        if r["split"] == "train":
            e = r["epoch"]
            r["conflict/cos/left~ink"], r["conflict/fraction"] = -0.1 * e, 1.0 if e > 0 else 0.0
            r["conflict/norm/left"], r["conflict/norm/ink"] = 0.1 * e, 2.0 - 0.1 * e
    fig, plain = build_curves_figure(rows, TASKS), build_curves_figure(history(), TASKS)
    figures += [fig, plain]
    conflict, norms = "gradient conflict (train, shared repr.)", "gradient norm / mean over tasks"
    assert conflict not in panels(plain) and norms not in panels(plain)
    lines = {ln.get_label(): ln for ln in data_lines(panels(fig)[conflict])}
    assert list(lines["left~ink"].get_ydata()) == pytest.approx([-0.1 * e for e in range(1, 6)])
    low, high = panels(fig)[conflict].get_ylim()
    assert low <= -0.5 and 0.0 <= high < 0.5  # fitted to the cosines, 0 always in view
    (fraction,) = [ln for ax in fig.axes for ln in data_lines(ax) if ln.get_label().startswith("fraction of pairs")]
    assert fraction.axes is not panels(fig)[conflict] and fraction.axes.get_ylim() == pytest.approx((-0.02, 1.02))
    assert fraction.get_color() == "black" and list(fraction.get_ydata()) == [1.0] * 5
    ratio = {ln.get_label(): ln for ln in data_lines(panels(fig)[norms])}
    assert set(ratio) == {"left", "ink"} and panels(fig)[norms].get_yscale() == "log"
    assert list(ratio["ink"].get_ydata()) == pytest.approx([2.0 - 0.1 * e for e in range(1, 6)])
    loss_colours = {ln.get_label(): ln.get_color() for ln in data_lines(panels(fig)["loss per task"])}
    assert ratio["left"].get_color() == loss_colours["left val"]
