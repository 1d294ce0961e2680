"""`type: regression` target: one or more numeric columns, given to the task as float [D]."""

from __future__ import annotations


import numpy as np
import torch

from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import number_column
from mtlrun.data.table.fields.base import Field, Reading, is_column


class RegressionField(Field):
    """Options: column or columns (exactly one), standardize (true: (value - train mean) / train std per
    column, the statistics kept in the checkpoint, state `targets`; false: raw values)."""

    defaults = {"column": None, "columns": None, "standardize": False}
    column_options = ("column", "columns")

    def check_options(self, problems: list[str]) -> None:
        o = self.options
        if (o["column"] is None) == (o["columns"] is None):
            problems.append(f"{self.key}: give exactly one of column: <name> or columns: [<name>, ...]")
        elif o["columns"] is not None:
            columns = o["columns"]
            self.need(problems, isinstance(columns, (list, tuple)) and columns and all(map(is_column, columns)),
                      "columns", "must be a non-empty list of column names")
        self.need(problems, isinstance(o["standardize"], bool), "standardize",
                  "must be true (targets as (value - train mean) / train std) or false (raw values)")

    def read(self, reading: Reading, train: np.ndarray):
        cols = [number_column(reading.m, c, self.key, reading.problems) for c in self.columns]
        values = np.stack([v for v, _ in cols], axis=1)
        present = np.all(np.stack([p for _, p in cols], axis=1), axis=1)
        if not reading.train_has_some(self, present, train, self.column):
            return None
        if self.options["standardize"]:
            def fit():
                x = values[train][present[train]]
                std = x.std(axis=0)
                return {"mean": x.mean(axis=0).tolist(), "std": np.where(std > 1e-12, std, 1.0).tolist()}

            stats = reading.fitted("targets", self.name, fit)
            values = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        target = torch.from_numpy(values).float()
        target[torch.from_numpy(~present)] = float("nan")
        return target, present

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("regression", dim=len(self.columns))
