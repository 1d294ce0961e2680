"""What the label targets (classification, binary, multilabel) share: the `unknown` option, reading a label
column, turning labels into class codes, and a YAML boolean option standing for a label."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from mtlrun.data.table.cells import BOOLEAN_WORDS, label_column, reads_as, sorted_labels
from mtlrun.data.table.fields.base import Field, Reading


log = logging.getLogger("mtlrun")
UNKNOWN = ("error", "missing")  # what a val/test label that the train split never has becomes


class LabelField(Field):
    """A target whose classes are the train split's labels, sorted, kept in the checkpoint (state `classes`)."""

    def check_options(self, problems: list[str]) -> None:
        self.need(problems, self.options["unknown"] in UNKNOWN, "unknown",
                  f"valid: {', '.join(UNKNOWN)} (what a val/test label that the train split never has becomes)")

    def labels(self, reading: Reading, train: np.ndarray):
        """(labels, present) of the label column, or None when it cannot be read or train has no label."""
        labels = label_column(reading.m, self.column, reading.problems)
        if labels is None:
            return None
        present = np.array([v is not None for v in labels])
        if not reading.train_has_some(self, present, train, self.column):
            return None
        return labels, present

    def codes(self, reading: Reading, labels: list, present: np.ndarray, classes: list) -> np.ndarray:
        """int64 [rows]: each label's index in `classes`, -1 where absent. A label not in `classes` is a problem,
        or with `unknown: missing` an absent label (`present` is updated)."""
        index = {c: i for i, c in enumerate(classes)}
        codes = np.full(len(labels), -1, dtype=np.int64)
        for row in np.flatnonzero(present):
            code = index.get(labels[row])
            if code is None:
                present[row] = False
                if self.options["unknown"] == "error":
                    shown = ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
                    reading.problems.add(f"{reading.m.at(int(row), self.column)}: class {labels[row]!r} is not among "
                                         f"{reading.origin} {len(classes)} classes ({shown}); fix the cell, or set "
                                         f"{self.key}.unknown=missing to read it as a missing label",
                                         group=("unknown", self.key))
            else:
                codes[row] = code
        return codes

    def boolean_label(self, reading: Reading, option: str, labels: Sequence):
        """The one label of the column that a YAML boolean option means (`positive: yes` reads as True), or
        None and a problem when no label or several labels mean it."""
        flag = self.options[option]
        matches = sorted_labels(v for v in labels if v is not None and reads_as(flag, v))
        if len(matches) == 1:
            log.info(f"{self.key}.{option}: YAML read it as the boolean {str(flag).lower()}; it matches the label "
                     f"{matches[0]!r} of column '{self.column}'")
            return matches[0]
        if matches:
            found = f"several labels that mean {str(flag).lower()}: {', '.join(map(repr, matches))}"
        else:
            shown = sorted_labels(v for v in labels if v is not None)
            found = (f"no label that means {str(flag).lower()} (labels: "
                     f"{', '.join(map(repr, shown[:6]))}{', ...' if len(shown) > 6 else ''})")
        example = matches[0] if matches else BOOLEAN_WORDS[flag][0]
        reading.problems.add(f"{self.key}.{option}={str(flag).lower()}: YAML reads an unquoted yes / no / true / "
                             f"false / on / off as a boolean, and column '{self.column}' of {reading.m.path} has "
                             f"{found}; quote the label as the column writes it, e.g. {option}: \"{example}\"")
        return None
