"""`type: audio` input: a column of `.wav` or 1-D `.npy` clips, given to the model as float [num_samples]."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlrun.checks import is_int
from mtlrun.data import media
from mtlrun.data.base import ModalityInfo
from mtlrun.data.table.fields.base import REQUIRED, FileReader, Reading
from mtlrun.data.table.fields.files import FileField


@dataclass(frozen=True)
class AudioReader(FileReader):
    """float32 [num_samples] per clip: cut, or zero-padded at the end."""

    sample_rate: int
    num_samples: int

    def __call__(self, path: str) -> torch.Tensor:
        return media.load_audio(path, self.sample_rate, self.num_samples)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_samples,)


class AudioField(FileField):
    """Options: sample_rate (Hz; a .wav must have it) and num_samples (the length every clip is cut or padded to)."""

    defaults = {"column": REQUIRED, "sample_rate": REQUIRED, "num_samples": REQUIRED}
    suffixes = media.AUDIO_SUFFIXES

    def check_options(self, problems: list[str]) -> None:
        o = self.options
        self.need(problems, is_int(o["sample_rate"]) and o["sample_rate"] >= 1, "sample_rate",
                  "must be an integer >= 1 (Hz)")
        self.need(problems, is_int(o["num_samples"]) and o["num_samples"] >= 1, "num_samples",
                  "must be an integer >= 1 (clips are cut or zero-padded to it)")

    def reader(self, reading: Reading) -> AudioReader:
        return AudioReader(self.type, self.resample, sample_rate=self.options["sample_rate"],
                           num_samples=self.options["num_samples"])

    def info(self, reading: Reading) -> ModalityInfo:
        o = self.options
        return ModalityInfo("audio", (o["num_samples"],), {"sample_rate": o["sample_rate"],
                                                           "num_samples": o["num_samples"]})
