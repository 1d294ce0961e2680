"""`logger=csv` (the default): the per-step scalars in <run dir>/steps.csv, one row per log step.

The per-epoch values are in metrics.csv, which every run writes whatever `logger` says (it is the run-dir
contract `mtlrun report` reads), so this logger adds only the steps. No package needed.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mtlrun.engine.logger.base import Logger
from mtlrun.engine.records import read_metrics_csv

PREFIX = "train_step/"


class CSVLogger(Logger):
    option = "csv"

    def __init__(self, filename: str = "steps.csv", on_error: str = "fail"):
        self.filename, self.on_error = filename, on_error
        self.path: Path | None = None
        self.columns: list[str] | None = None

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        self.path = run_dir / self.filename
        if self.path.is_file():  # a resumed run: keep the rows up to its checkpoint, drop the replayed ones
            rows = [r for r in read_metrics_csv(self.path) if r.get("step", 0) <= step]
            self.columns = ["step", *[k for k in rows[0] if k != "step"]] if rows else None
            self._write(rows, "w")

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        if axis != "step":
            return  # metrics.csv has them
        row = {"step": step, **{k.removeprefix(PREFIX): v for k, v in values.items()}}
        self._write([row], "a")  # opened per log step: a crash loses nothing written so far

    def _write(self, rows: list[dict], mode: str) -> None:
        if self.columns is None and rows:
            self.columns = list(rows[0])
            mode = "w"
        if self.columns is None:
            return
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if mode == "w":
                writer.writeheader()
            writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
