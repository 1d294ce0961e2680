"""`type: multilabel` target: a column of label sets (`a|b` or a JSON list), given to the task as float [K]."""

from __future__ import annotations


import numpy as np
import torch

from mtlrun.checks import is_real
from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import canon, sorted_labels
from mtlrun.data.table.fields.base import REQUIRED, Reading
from mtlrun.data.table.fields.labels import LabelField


LABEL_KINDS = ("number", "text", "boolean")


class MultilabelField(LabelField):
    """Options: sep (between the labels of a text cell), none (the cell text of an empty set; a YAML boolean
    matches the label that reads as it), unknown. Labels: those of the train split, sorted."""

    defaults = {"column": REQUIRED, "sep": "|", "none": None, "unknown": "error"}

    def check_options(self, problems: list[str]) -> None:
        super().check_options(problems)
        o = self.options
        self.need(problems, isinstance(o["sep"], str) and o["sep"] != "", "sep",
                  "must be a non-empty separator string")
        self.need(problems, o["none"] is None or isinstance(o["none"], (str, bool)), "none",
                  "must be null or the cell text that means an empty label set")

    def read(self, reading: Reading, train: np.ndarray):
        m = reading.m
        none = self.options["none"]
        if isinstance(none, bool):
            none = self.boolean_label(reading, "none", [c.strip() for c in m.cells[self.column] if isinstance(c, str)])
            if none is None:
                return None
        sets, present = self._sets(reading, none)
        kinds = {type(v).__name__ if not is_real(v) else "number" for s in sets if s for v in s}
        if len(kinds) > 1:
            reading.problems.add(f"{m.path}, column '{self.column}': mixed types: labels of kinds "
                                 f"{', '.join(sorted(kinds))}; a label column holds only numbers or only texts",
                                 group=("mixed", self.key))
            return None
        if not reading.train_has_some(self, present, train, self.column):
            return None
        labels = reading.fitted("classes", self.name,
                                lambda: sorted_labels(v for i in train if present[i] for v in sets[i]))
        index = {c: i for i, c in enumerate(labels)}
        target = torch.full((m.rows, len(labels)), float("nan"))
        for row in np.flatnonzero(present):
            unknown = [v for v in sets[row] if v not in index]
            if unknown:
                present[row] = False
                if self.options["unknown"] == "error":
                    reading.problems.add(f"{m.at(int(row), self.column)}: label {unknown[0]!r} is not among "
                                         f"{reading.origin} {len(labels)} labels; fix the cell, or set "
                                         f"{self.key}.unknown=missing to read it as a missing label",
                                         group=("unknown", self.key))
                continue
            target[row] = 0.0
            target[row, [index[v] for v in sets[row]]] = 1.0
        return target, present

    def _sets(self, reading: Reading, none) -> tuple[list, np.ndarray]:
        """(the set of canonical labels of each row, None where empty; present [rows])."""
        m, sep = reading.m, self.options["sep"]
        sets, present = [], np.zeros(m.rows, dtype=bool)
        for row, cell in enumerate(m.cells[self.column]):
            if cell is None:
                sets.append(None)
                continue
            if isinstance(cell, str):
                items = [] if none is not None and cell.strip() == none else [s for s in cell.split(sep) if s.strip()]
            elif isinstance(cell, list):
                items = cell
            else:
                items = [cell]
            labels = [canon(x) for x in items]
            bad = [x for (kind, _), x in zip(labels, items) if kind not in LABEL_KINDS]
            if bad:
                reading.problems.add(f"{m.at(row, self.column)}: labels must be numbers or texts, got {bad[0]!r}",
                                     group=("kind", self.key))
            sets.append({v for kind, v in labels if kind in LABEL_KINDS})
            present[row] = True
        return sets, present

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("multilabel", dim=len(reading.state["classes"][self.name]))
