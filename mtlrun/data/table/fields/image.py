"""`type: image` input: a column of image files, decoded as uint8 and given to the model as float [C, H, W]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from mtlrun.checks import is_real
from mtlrun.data import media
from mtlrun.data.base import ModalityInfo
from mtlrun.data.table.fields.base import REQUIRED, FileReader, Reading, is_size
from mtlrun.data.table.fields.files import FileField


@dataclass(frozen=True, eq=False)
class ImageReader(FileReader):
    """uint8 [C, H, W] per file; a batch is float in [0, 1], then (x - mean) / std after augmentation."""

    size: tuple[int, int]
    channels: int
    mean: torch.Tensor  # [C or 1, 1, 1]
    std: torch.Tensor

    stored_dtype: ClassVar[torch.dtype] = torch.uint8

    def __call__(self, path: str) -> torch.Tensor:
        return media.load_image(path, self.size, self.channels)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)

    def to_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).div_(255.0)

    def finish(self, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        x = x.sub_(self.mean).div_(self.std)
        if present is not None:  # normalising moved the zeros of a missing image: zeros again
            x.mul_(present.view(-1, 1, 1, 1).to(x.dtype))
        return x


class ImageField(FileField):
    """Options: size (null: the first train image's, kept in the checkpoint), channels (1 grey, 3 RGB), mean
    and std per channel (pixels in [0, 1]; null: no shift or scale)."""

    defaults = {"column": REQUIRED, "size": None, "channels": 3, "mean": None, "std": None}
    resample = "bilinear"

    def check_options(self, problems: list[str]) -> None:
        o = self.options
        self.need(problems, is_size(o["size"]), "size",
                  "must be null (the first training image's size) or [H, W] of ints >= 1")
        self.need(problems, o["channels"] in (1, 3), "channels", "must be 1 (grey) or 3 (RGB)")
        for option in ("mean", "std"):
            v = o[option]
            ok = v is None or (isinstance(v, (list, tuple)) and len(v) in (1, o["channels"])
                               and all(is_real(x) for x in v))
            self.need(problems, ok, option, "must be null or a list of 1 or `channels` numbers")
        if isinstance(o["std"], (list, tuple)) and any(is_real(x) and x <= 0 for x in o["std"]):
            problems.append(f"{self.key}.std={o['std']}: every value must be > 0")

    def read(self, reading: Reading, train: np.ndarray):
        paths, present = super().read(reading, train)
        if self.options["size"] is None and not reading.problems:
            def first_size():
                i = next(i for i in train if present[i])
                try:
                    return list(media.image_size(paths[i]))
                except media.MediaError as exc:
                    reading.problems.add(f"{reading.m.at(int(i), self.column)}: cannot read the image {paths[i]}: "
                                         f"{exc}")
                    return [1, 1]
            reading.fitted("sizes", self.name, first_size)
        return paths, present

    def image_size(self, reading: Reading) -> tuple[int, int]:
        if self.options["size"] is not None:
            return tuple(self.options["size"])
        return tuple(reading.state["sizes"][self.name])

    def reader(self, reading: Reading) -> ImageReader:
        o = self.options
        mean = o["mean"] if o["mean"] is not None else [0.0]
        std = o["std"] if o["std"] is not None else [1.0]
        return ImageReader(self.type, self.resample, size=self.image_size(reading), channels=o["channels"],
                           mean=torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                           std=torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def info(self, reading: Reading) -> ModalityInfo:
        r = self.reader(reading)
        return ModalityInfo("image", r.shape, {"in_channels": r.channels, "input_size": r.size})
