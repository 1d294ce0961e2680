"""`type: audio` input: a column of `.wav`, `.flac` / `.ogg` (pip install "mtlrun[audio]") or 1-D `.npy` clips,
given to the model as float [num_samples] at `sample_rate` (files at another rate are resampled)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    """Options: sample_rate (Hz; files at another rate are resampled to it) and num_samples (the length every
    clip is cut or padded to)."""

    defaults = {"column": REQUIRED, "sample_rate": REQUIRED, "num_samples": REQUIRED}
    suffixes = media.AUDIO_SUFFIXES

    def read(self, reading: Reading, train):
        """The FileField checks, and FLAC / OGG files only where the soundfile package can read them."""
        paths, present = super().read(reading, train)
        if not media.has_soundfile():
            for row in np.flatnonzero(present):
                if Path(paths[row]).suffix.lower() in media.SOUNDFILE_SUFFIXES:
                    reading.problems.add(f"{reading.m.at(int(row), self.column)}: {paths[row]}: reading FLAC / OGG "
                                         f"audio needs the soundfile package: {media.AUDIO_EXTRA} (or convert "
                                         f"the files to .wav)", group=("soundfile", self.key))
        return paths, present

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
