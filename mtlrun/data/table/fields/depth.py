"""`type: depth` target: a column of depth maps (`.npy` float or 16-bit PNG), given as float [1, H, W]."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlrun.checks import is_real
from mtlrun.data import media
from mtlrun.data.base import TargetInfo
from mtlrun.data.table.fields.base import REQUIRED, FileReader, Reading
from mtlrun.data.table.fields.files import DenseTarget


@dataclass(frozen=True)
class DepthReader(FileReader):
    """float32 [1, H, W] per map, 0 = invalid."""

    size: tuple[int, int]
    png_scale: float

    def __call__(self, path: str) -> torch.Tensor:
        return media.load_depth(path, self.size, self.png_scale)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, *self.size)

    def blank(self, n: int) -> torch.Tensor:
        return torch.full((n, *self.shape), float("nan"))


class DepthField(DenseTarget):
    """Options: png_scale (16-bit PNG value x png_scale = depth; 0.001: millimetres to metres), size."""

    defaults = {"column": REQUIRED, "png_scale": 0.001, "size": None}
    suffixes = media.DEPTH_SUFFIXES

    def check_options(self, problems: list[str]) -> None:
        self.need(problems, is_real(self.options["png_scale"]) and self.options["png_scale"] > 0, "png_scale",
                  "must be a number > 0 (16-bit PNG value x png_scale = depth; 0.001: millimetres to metres)")
        super().check_options(problems)

    def reader(self, reading: Reading) -> DepthReader:
        return DepthReader(self.type, self.resample, size=self.size(reading),
                           png_scale=float(self.options["png_scale"]))

    def info(self, reading: Reading) -> TargetInfo:
        return TargetInfo("depth", dim=1)
