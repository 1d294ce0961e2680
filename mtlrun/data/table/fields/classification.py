"""`type: classification` target: a label column, given to the task as a long index into the sorted classes."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import sorted_labels
from mtlrun.data.table.fields.base import REQUIRED, Reading
from mtlrun.data.table.fields.labels import LabelField


log = logging.getLogger("mtlrun")


class ClassificationField(LabelField):
    """Options: unknown (error | missing). Classes: the train split's labels, sorted."""

    defaults = {"column": REQUIRED, "unknown": "error"}

    def read(self, reading: Reading, train: np.ndarray):
        if (column := self.labels(reading, train)) is None:
            return None
        labels, present = column
        classes = reading.fitted("classes", self.name, lambda: sorted_labels(labels[i] for i in train if present[i]))
        if reading.loaded is None and len(classes) == 1:
            log.warning(f"{self.key}: every labelled row of the train split has the class {classes[0]!r} (column "
                        f"'{self.column}' of {reading.m.path}); the task has a single class to learn, so it learns "
                        f"nothing useful; training continues")
        return torch.from_numpy(self.codes(reading, labels, present, classes)), present

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("classification", num_classes=len(reading.state["classes"][self.name]))
