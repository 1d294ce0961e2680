"""curves.png in the test process: every figure built, only the ones a test reads rasterised (installed by
tests/conftest.py).

After every train run mtlrun draws curves.png: `build_curves_figure` lays out every panel from the run's
history (the part that can fail on an unusual history: a task without a metric, NaN values, changing weights,
conflict curves), then matplotlib rasterises it to PNG, ~1 s on a 2-core machine: a third of what a tiny
in-process CLI test costs, for a file almost no test reads. In the test process every train run still builds
its figure from its own history (so every arch, task and weighting the suite trains passes through the
plotting code), but the PNG is rendered and written only inside `rasterised()`: the session's trained_run,
whose curves.png tests/cli/test_cli.py checks, uses it; tests/engine/test_plots.py calls the plot functions
itself. Real processes (the e2e tests that start one, MTLRUN_TEST_SUBPROCESS=1) draw it unchanged.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import mtlrun.train
from mtlrun.engine import plots

ORIGINAL_PLOT_CURVES = plots.plot_curves
_rasterise = False


def _plot_curves(rows: list[dict], tasks: dict, path: str | os.PathLike, best_epoch: int | None = None) -> None:
    if _rasterise:
        ORIGINAL_PLOT_CURVES(rows, tasks, path, best_epoch=best_epoch)
    else:
        plots.pyplot().close(plots.build_curves_figure(rows, tasks, best_epoch))


@contextmanager
def rasterised():
    """Train runs inside write curves.png as mtlrun does."""
    global _rasterise
    saved, _rasterise = _rasterise, True
    try:
        yield
    finally:
        _rasterise = saved


def install() -> None:
    mtlrun.train.plot_curves = _plot_curves
