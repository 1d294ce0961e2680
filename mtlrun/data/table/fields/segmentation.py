"""`type: segmentation` target: a column of PNG masks of class ids, given to the task as long [H, W]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mtlrun.checks import is_int
from mtlrun.data import media
from mtlrun.data.base import TargetInfo
from mtlrun.data.table.fields.base import REQUIRED, FileReader, Reading
from mtlrun.data.table.fields.files import DenseTarget


@dataclass(frozen=True)
class MaskReader(FileReader):
    """long [H, W] class ids per mask, -1 = ignore (stored as int16 in the cache)."""

    size: tuple[int, int]
    num_classes: int
    ignore_index: int | None

    stored_dtype: ClassVar[torch.dtype] = torch.int16

    def __call__(self, path: str) -> torch.Tensor:
        return media.load_mask(path, self.size, self.num_classes, self.ignore_index)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.size)

    def blank(self, n: int) -> torch.Tensor:
        return torch.full((n, *self.shape), -1, dtype=torch.int64)

    def to_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()


class SegmentationField(DenseTarget):
    """Options: num_classes, ignore_index (the pixel value of ignored pixels, read as -1), size."""

    defaults = {"column": REQUIRED, "num_classes": REQUIRED, "ignore_index": 255, "size": None}

    def check_options(self, problems: list[str]) -> None:
        o = self.options
        self.need(problems, is_int(o["num_classes"]) and o["num_classes"] >= 2, "num_classes",
                  "must be an integer >= 2")
        self.need(problems, o["ignore_index"] is None or (is_int(o["ignore_index"]) and o["ignore_index"] >= 0),
                  "ignore_index", "must be null or the pixel value (>= 0) that marks ignored pixels (255 by default)")
        super().check_options(problems)

    def reader(self, reading: Reading) -> MaskReader:
        o = self.options
        return MaskReader(self.type, self.resample, size=self.size(reading), num_classes=o["num_classes"],
                          ignore_index=o["ignore_index"])

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("segmentation", num_classes=self.options["num_classes"])
