"""Dataset and data-module building blocks shared by every built-in dataset.

A sample / batch is the dict of DESIGN.md:
    {"inputs": {modality: Tensor}, "targets": {task: Tensor},
     optional "label_mask": {task: BoolTensor[B]}, optional "modality_mask": {modality: BoolTensor[B]}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, default_collate

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TargetInfo:
    """What the data says about one target, so task heads can be checked against it."""

    kind: str  # classification | binary | multilabel | regression
    num_classes: int | None = None  # classification: labels are 0..num_classes-1
    dim: int | None = None  # multilabel: number of labels; regression: number of outputs


@dataclass(frozen=True)
class DataSpec:
    modalities: dict[str, tuple[int, ...]]  # per-sample shape of each input
    targets: dict[str, TargetInfo] = field(default_factory=dict)


class TensorDictDataset(Dataset):
    """An in-memory dataset of equally long tensors in the batch-dict layout.

    `__getitems__` lets the DataLoader fetch a whole batch with one index_select per tensor instead of
    B `__getitem__` calls plus a collate, which matters on CPU where the step itself is only milliseconds.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 label_mask: dict[str, torch.Tensor] | None = None,
                 modality_mask: dict[str, torch.Tensor] | None = None):
        self.tensors = {"inputs": inputs, "targets": targets}
        if label_mask:
            self.tensors["label_mask"] = label_mask
        if modality_mask:
            self.tensors["modality_mask"] = modality_mask
        lengths = {len(t) for group in self.tensors.values() for t in group.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors must have the same length, got lengths {sorted(lengths)}")
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        return {k: {name: t[index] for name, t in group.items()} for k, group in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: {name: t.index_select(0, idx) for name, t in group.items()}
                for k, group in self.tensors.items()}


def collate(samples):
    """Collate a list of sample dicts; a batch already assembled by `__getitems__` passes through."""
    if isinstance(samples, Mapping):
        return samples
    return default_collate(samples)


class DataModule:
    """Holds the splits of one dataset and the loader settings from the `data` config group."""

    name = "data"

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | None = None, drop_last: bool = True):
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self._splits: dict[str, Dataset] | None = None

    def build(self) -> dict[str, Dataset]:
        """Return {"train": ..., "val": ..., "test": ...}; called once, lazily."""
        raise NotImplementedError

    @property
    def spec(self) -> DataSpec:
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            from mtlrun.errors import UsageError

            raise UsageError(f"split={split!r} is not a split; valid: {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self.build()
        return self._splits[split]
