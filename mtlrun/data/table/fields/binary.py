"""`type: binary` target: a column of two labels, given to the task as float 1 (`positive`) or 0."""

from __future__ import annotations


import numpy as np
import torch

from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import canon, sorted_labels
from mtlrun.data.table.fields.base import REQUIRED, Reading
from mtlrun.data.table.fields.labels import LabelField
from mtlrun.data.table.missing import COMMON_MARKERS, na_values_override


class BinaryField(LabelField):
    """Options: positive (null: the larger of the two labels; a YAML boolean matches the label that reads as
    it), unknown. Its classes are [negative, positive]."""

    defaults = {"column": REQUIRED, "positive": None, "unknown": "error"}

    def check_options(self, problems: list[str]) -> None:
        super().check_options(problems)
        if isinstance(self.options["positive"], (list, dict)):
            problems.append(f"{self.key}.positive={self.options['positive']!r}: must be null or one label value")

    def read(self, reading: Reading, train: np.ndarray):
        if (column := self.labels(reading, train)) is None:
            return None
        labels, present = column
        before = reading.problems.total()
        classes = reading.fitted("classes", self.name, lambda: self._fit(reading, labels, present, train))
        if reading.problems.total() > before:
            return None  # not two classes: every other row would only repeat it
        target = torch.from_numpy(self.codes(reading, labels, present, classes)).float()
        return torch.where(torch.from_numpy(present), target, torch.full_like(target, float("nan"))), present

    def _fit(self, reading: Reading, labels: list, present: np.ndarray, train: np.ndarray) -> list:
        """[negative, positive] from the train split (a problem unless there are two)."""
        seen = {labels[i] for i in train if present[i]}
        positive = self.options["positive"]
        if isinstance(positive, bool):
            positive = self.boolean_label(reading, "positive", labels)
            if positive is None:
                return []
        if positive is not None:
            positive = canon(positive)[1]
            seen.add(positive)
        ordered = sorted_labels(seen)
        if len(ordered) > 2:
            markers = [v for v in ordered if isinstance(v, str) and v in COMMON_MARKERS]
            fix = (f"if {markers[0]!r} marks a missing label, set {na_values_override(markers[0])} (read as an empty "
                   f"cell); else use type: classification" if markers else "use type: classification")
            reading.problems.add(f"{self.key}: {reading.m.path}, column '{self.column}' has {len(ordered)} values "
                                 f"in the train split ({', '.join(map(repr, ordered[:6]))}); a binary target has two; "
                                 f"{fix}")
            return ordered[:2]
        if len(ordered) == 1:
            reading.problems.add(f"{self.key}: {reading.m.path}, column '{self.column}' has the single value "
                                 f"{ordered[0]!r} in the train split; set {self.key}.positive to the positive label")
            return ordered
        if positive is not None and ordered[1] != positive:
            ordered = ordered[::-1]
        return ordered

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("binary", dim=1)
