"""One split of a table as a Dataset: table values in memory, files decoded per batch (or kept in a cache).

`TableDataset.__getitems__` builds a whole batch in the batch-dict layout; nothing is held open between
calls, so DataLoader workers are safe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlrun.data import media
from mtlrun.data.table.augment import Augment
from mtlrun.data.table.fields.base import FileReader
from mtlrun.data.table.manifest import where
from mtlrun.errors import UsageError

MASK_GROUPS = {"inputs": "modality_mask", "targets": "label_mask"}  # where a role's presence per sample goes


@dataclass
class FileColumn:
    """The files of one field in one split: paths ('' = empty cell), where each came from, an optional cache."""

    role: str
    name: str
    reader: FileReader
    paths: np.ndarray  # str [N]
    rows: np.ndarray  # int [N] manifest row of each sample
    origin: tuple  # (manifest path, row numbers, lines or None, column): for messages at load time
    cache: torch.Tensor | None = None

    def describe(self, i: int) -> str:
        return where(self.origin, int(self.rows[i]))

    def read(self, i: int) -> torch.Tensor:
        try:
            return self.reader(str(self.paths[i]))
        except (media.MediaError, OSError) as exc:
            raise UsageError(f"data=table: {self.describe(i)}: cannot read {self.reader.type} file "
                             f"{self.paths[i]}: {exc}") from None

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        """The rows `indices` in the layout of a batch (FileReader.to_batch), empty cells as blanks."""
        if self.cache is not None:
            return self.reader.to_batch(self.cache.index_select(0, torch.as_tensor(indices, dtype=torch.long)))
        out = self.reader.blank(len(indices))
        for j, i in enumerate(indices):
            if self.paths[i]:
                out[j] = self.read(int(i))
        return self.reader.to_batch(out)


class DecodeAll(Dataset):
    """Every non-empty file of a column, decoded, each as (index, tensor, None) or (index, None, problem)."""

    def __init__(self, column: FileColumn):
        self.column = column
        self.todo = np.flatnonzero(column.paths != "")

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        i = int(self.todo[k])
        try:
            return i, self.column.read(i), None
        except UsageError as exc:
            return i, None, str(exc).removeprefix("data=table: ")


def passthrough(items):
    return items


class TableDataset(Dataset):
    """One split: in-memory tensors for table values, files decoded per batch (or from the cache), then
    augmented (train only) and finished by their reader (images normalised; a missing image stays zeros)."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], files: list[FileColumn], length: int,
                 augment: Augment | None = None):
        self.tensors, self.files, self.length, self.augment = tensors, files, length, augment

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices: Sequence[int]) -> dict:
        indices = [int(i) for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {group: {name: t.index_select(0, idx) for name, t in d.items()} for group, d in self.tensors.items()}
        for column in self.files:
            batch[column.role][column.name] = column.gather(indices)
        if self.augment:
            theta = self.augment.theta(len(indices))
            for column in self.files:
                if column.reader.resample is not None:
                    group = batch[column.role]
                    group[column.name] = Augment.apply(group[column.name], theta,
                                                       nearest=column.reader.resample == "nearest")
        for column in self.files:
            present = batch.get(MASK_GROUPS[column.role], {}).get(column.name)
            batch[column.role][column.name] = column.reader.finish(batch[column.role][column.name], present)
        return batch

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {group: {name: t[0] for name, t in d.items()} for group, d in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> TableDataset:
        keep = set(keep)
        tensors = {group: ({n: t for n, t in d.items() if n in keep} if group in ("inputs", "modality_mask") else d)
                   for group, d in self.tensors.items()}
        tensors = {group: d for group, d in tensors.items() if d or group in ("inputs", "targets")}
        files = [c for c in self.files if c.role == "targets" or c.name in keep]
        return TableDataset(tensors, files, len(self), self.augment)
