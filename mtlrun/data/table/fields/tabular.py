"""`type: tabular` input: numeric and categorical columns as one modality, float [N + K].

Numeric columns are standardised with the train split's mean and std (an empty cell reads as the mean, 0);
categorical columns become codes 1..K_j of the train split's sorted categories (0 = empty or unseen). The
modality is missing for a row only when all its cells are empty."""

from __future__ import annotations


import numpy as np
import torch

from mtlrun.data.base import ModalityInfo
from mtlrun.data.table.cells import label_column, number_column, sorted_labels
from mtlrun.data.table.fields.base import Field, Reading, is_column


class TabularField(Field):
    """Options: numeric: [columns], categorical: [columns] (at least one column in all)."""

    defaults = {"numeric": [], "categorical": []}
    column_options = ("numeric", "categorical")

    def check_options(self, problems: list[str]) -> None:
        o = self.options
        for option in ("numeric", "categorical"):
            v = o[option]
            self.need(problems, isinstance(v, (list, tuple)) and all(is_column(c) for c in v), option,
                      "must be a list of column names")
        if not (o["numeric"] or o["categorical"]):
            problems.append(f"{self.key}: a tabular input needs numeric: [...] and/or categorical: [...] columns")

    def read(self, reading: Reading, train: np.ndarray):
        m = reading.m
        standard, given = self._numeric(reading, train)
        labels_by_column = [label_column(m, c, reading.problems) for c in self.options["categorical"]]
        if any(labels is None for labels in labels_by_column):
            return None
        cat_given = []
        for labels, column in zip(labels_by_column, self.options["categorical"]):
            present = np.array([v is not None for v in labels])
            cat_given.append(present)
            reading.train_has_some(self, present, train, column)

        def fit_categories():
            return [sorted_labels(labels[i] for i in train if labels[i] is not None) for labels in labels_by_column]

        categories = reading.fitted("categories", self.name, fit_categories) if self.options["categorical"] else []
        codes = []
        for labels, cats in zip(labels_by_column, categories):
            index = {c: i + 1 for i, c in enumerate(cats)}  # 0 = empty or unseen in train
            codes.append(np.array([index.get(v, 0) for v in labels], dtype=np.float64))
        table = np.concatenate([standard, np.stack(codes, axis=1) if codes else np.zeros((m.rows, 0))], axis=1)
        present = np.concatenate([given, np.stack(cat_given, axis=1) if cat_given else np.zeros((m.rows, 0), bool)],
                                 axis=1).any(axis=1)
        return torch.from_numpy(table).float(), present

    def _numeric(self, reading: Reading, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised values [rows, N], given [rows, N]) of the numeric columns."""
        numeric = [number_column(reading.m, c, self.key, reading.problems) for c in self.options["numeric"]]
        if not numeric:
            return np.zeros((reading.m.rows, 0)), np.zeros((reading.m.rows, 0), dtype=bool)
        values = np.stack([v for v, _ in numeric], axis=1)
        given = np.stack([p for _, p in numeric], axis=1)
        for j, column in enumerate(self.options["numeric"]):
            reading.train_has_some(self, given[:, j], train, column)

        def fit():
            stats = {"mean": [], "std": []}
            for j in range(len(self.options["numeric"])):
                x = values[train][given[train, j], j]
                stats["mean"].append(float(x.mean()) if len(x) else 0.0)
                std = float(x.std()) if len(x) else 1.0
                stats["std"].append(std if std > 1e-12 else 1.0)
            return stats

        stats = reading.fitted("numeric", self.name, fit)
        standard = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        return np.where(given, standard, 0.0), given  # empty cells read as the train mean

    def info(self, reading: Reading) -> ModalityInfo:
        cards = [len(c) for c in reading.state["categories"][self.name]] if self.options["categorical"] else []
        n = len(self.options["numeric"])
        return ModalityInfo("tabular", (n + len(cards),), {"num_numeric": n, "cardinalities": cards})
