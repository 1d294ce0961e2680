"""How long curves.png takes at the end of a run: plot_curves on a synthetic 20-epoch, 3-task history.

Prints the first call (matplotlib imported and its font cache read, as in a fresh `mtlrun train`) and the
median of later calls. Usage: python benchmarks/plot_time.py [--epochs 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path


def history(epochs: int, tasks: dict) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        train = {"epoch": e, "split": "train", "step": 10 * e, "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * e / epochs))}
        val = {"epoch": e, "split": "val", "step": 10 * e, "monitor": 1 - 1 / (e + 1)}
        for i, (name, task) in enumerate(tasks.items()):
            train[f"{name}/loss"] = 2.0 / (e + i)
            train[f"{name}/weight"] = 1.0 + 0.1 * math.sin(e + i)
            val[f"{name}/loss"] = 2.2 / (e + i) + 0.01 * e
            for m in task.metric_names:
                val[f"{name}/{m}"] = 1 - 1 / (e + 1 + i)
        rows += [train, val]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    from mtlrun.engine.plots import plot_curves
    from mtlrun.tasks import Classification, Regression

    tasks = {"digit": Classification(num_classes=10), "parity": Classification(num_classes=2),
             "ink": Regression(dim=1)}
    rows = history(args.epochs, tasks)
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for i in range(args.repeat + 1):
            start = time.perf_counter()
            plot_curves(rows, tasks, Path(tmp) / "curves.png")
            times.append(time.perf_counter() - start)
    print(f"plot_curves, {args.epochs} epochs, {len(tasks)} tasks: first call {times[0]:.3f} s "
          f"(imports matplotlib), then median {statistics.median(times[1:]):.3f} s over {args.repeat} calls")


if __name__ == "__main__":
    main()
