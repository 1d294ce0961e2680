"""Dataset and data-module building blocks shared by every built-in dataset.

A sample / batch is the dict of docs/architecture.md (data flow):
    {"inputs": {modality: Tensor}, "targets": {task: Tensor},
     optional "label_mask": {task: BoolTensor[B]}, optional "modality_mask": {modality: BoolTensor[B]}}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from mtlrun.data.loading import collate, eval_loader, persistent_train_loader, train_loader  # noqa: F401 (collate)
from mtlrun.data.modality import drop_modalities
from mtlrun.data.transforms import build_pipeline, joint_transform

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TargetInfo:
    """What the data says about one target, so task heads can be checked against it."""

    kind: str  # classification | binary | multilabel | regression | segmentation | depth | normals | tagging |
    #            detection
    num_classes: int | None = None  # classification: labels are 0..num_classes-1
    dim: int | None = None  # multilabel: number of labels; regression: number of outputs; detection: box rows
    # tagging: the tag names of ids 0..num_classes-1; detection: the class names, in class id order
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModalityInfo:
    """What the data says about one input, so its encoder (`backbone.<kind>`) can be built for it.

    Input layouts by kind (per sample; batches add a leading B):
    - image: float [C, H, W]. args: in_channels, input_size (H, W)
    - text: long [L] token ids, 0 = padding, 1 = unknown. args: vocab_size, max_len
    - audio: float [T] waveform. args: sample_rate
    - tabular: float [N + K]: N numeric features, then K categorical codes stored as floats
      (0 = missing/unknown, 1..cardinality). args: num_numeric, cardinalities (list of K ints)
    """

    kind: str
    shape: tuple[int, ...]
    args: dict = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class DataSpec:
    modalities: dict[str, ModalityInfo]
    targets: dict[str, TargetInfo] = field(default_factory=dict)

    def shape(self, modality: str) -> tuple[int, ...]:
        return self.modalities[modality].shape


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


class DataModule:
    """Holds the splits of one dataset and hands out their loaders, with the `data` group's loader settings.

    Subclasses implement `build()` (the splits) and `full_spec` (every input and target the data has).
    `modalities` (null = all) keeps a subset of the inputs: the model is built for, and the batches carry,
    only those. `modality_dropout` and `transforms` (torchvision.transforms.v2 on images and their per-pixel
    targets) transform training batches on the device (`train_transform`).
    `state_dict()` is what must travel in the checkpoint for `mtlrun eval` to read the data exactly as
    training did (e.g. a text vocabulary or class list built from the training split).
    """

    name = "data"

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | None = None, drop_last: bool = True,
                 modalities: Sequence[str] | None = None, modality_dropout: float = 0.0, transforms=None,
                 persistent_workers: bool = False):
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if not isinstance(persistent_workers, bool):
            from mtlrun.errors import UsageError

            raise UsageError(f"data.persistent_workers={persistent_workers}: must be true or false")
        # true (with num_workers > 0): one loader per split whose worker processes serve every epoch
        self.persistent_workers = persistent_workers
        self._loaders: dict[tuple, DataLoader] = {}
        self.drop_last = drop_last
        self.modalities = None if modalities is None else [str(m) for m in modalities]
        if isinstance(modality_dropout, bool) or not isinstance(modality_dropout, (int, float)) \
                or not 0 <= modality_dropout < 1:
            from mtlrun.errors import UsageError

            raise UsageError(f"data.modality_dropout={modality_dropout}: must be a number in [0, 1) (the "
                             f"probability that a sample loses each modality during training)")
        self.modality_dropout = float(modality_dropout)
        self.transforms = transforms
        build_pipeline(transforms)  # checked here, before anything is built on the data
        self._splits: dict[str, Dataset] | None = None

    def build(self) -> dict[str, Dataset]:
        """Return {"train": ..., "val": ..., "test": ...}; called once, lazily."""
        raise NotImplementedError

    @property
    def full_spec(self) -> DataSpec:
        raise NotImplementedError

    @property
    def spec(self) -> DataSpec:
        full = self.full_spec
        return DataSpec({m: full.modalities[m] for m in self.selected_modalities()}, full.targets)

    def selected_modalities(self) -> list[str]:
        available = list(self.full_spec.modalities)
        if self.modalities is None:
            return available
        from mtlrun.errors import UsageError

        unknown = [m for m in self.modalities if m not in available]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            problem = f"has no modality {', '.join(map(repr, unknown))}" if unknown else "needs distinct names"
            raise UsageError(f"data.modalities={self.modalities}: the data {problem}; available: "
                             f"{', '.join(available)} (pick one or more, e.g. data.modalities=[{available[0]}])")
        return [m for m in available if m in self.modalities]  # the data's order, whatever the config's

    # ---------------------------------------------------------------------------------- loaders
    def pin(self, device: torch.device) -> bool:
        """data.pin_memory, where null means: pin when the batches go to a CUDA device."""
        return device.type == "cuda" if self.pin_memory is None else bool(self.pin_memory)

    def train_loader(self, *, epoch: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                     skip_batches: int = 0) -> DataLoader:
        """This rank's shuffled batches of epoch `epoch`, a pure function of (seed, epoch); `skip_batches`
        drops the ones a mid-epoch checkpoint already consumed."""
        if self._persistent():
            key = ("train", seed, rank, world_size, self.pin(device))
            if key not in self._loaders:
                self._loaders[key] = persistent_train_loader(
                    self.dataset("train"), batch_size=self.batch_size, seed=seed, rank=rank, world_size=world_size,
                    drop_last=self.drop_last, num_workers=self.num_workers, pin_memory=self.pin(device))
            self._loaders[key].batch_sampler.aim(epoch, skip_batches)
            return self._loaders[key]
        return train_loader(self.dataset("train"), batch_size=self.batch_size, seed=seed, epoch=epoch, rank=rank,
                            world_size=world_size, drop_last=self.drop_last, skip_batches=skip_batches,
                            num_workers=self.num_workers, pin_memory=self.pin(device))

    def _persistent(self) -> bool:
        return self.persistent_workers and self.num_workers > 0

    def eval_loader(self, split: str, *, device: torch.device, rank: int = 0, world_size: int = 1,
                    batch_size: int | None = None) -> DataLoader:
        """This rank's shard of `split` (every sample on exactly one rank), in order."""
        key = (split, rank, world_size, batch_size or self.eval_batch_size, self.pin(device))
        if key in self._loaders:
            return self._loaders[key]
        loader = eval_loader(self.dataset(split), batch_size=batch_size or self.eval_batch_size, rank=rank,
                             world_size=world_size, num_workers=self.num_workers, pin_memory=self.pin(device),
                             persistent=self._persistent())
        if self._persistent():
            self._loaders[key] = loader
        return loader

    def train_batches(self, world_size: int = 1) -> int:
        """Batches per epoch on each rank (what len(train_loader) gives, without building one)."""
        per_rank = math.ceil(len(self.dataset("train")) / world_size)
        bs = self.batch_size
        return per_rank // bs if self.drop_last and per_rank >= bs else math.ceil(per_rank / bs)

    def train_transform(self) -> Callable[[dict], dict] | None:
        """What happens to every training batch on the device before the forward: `data.transforms`
        (mtlrun.data.transforms), then modality dropout."""
        steps = [step for step in (joint_transform(self.transforms, self.spec), self._modality_dropout())
                 if step is not None]
        if len(steps) < 2:
            return steps[0] if steps else None
        return partial(_in_turn, steps)

    def _modality_dropout(self) -> Callable[[dict], dict] | None:
        if not self.modality_dropout:
            return None
        if len(self.spec.modalities) < 2:
            logging.getLogger("mtlrun").warning(
                f"data.modality_dropout={self.modality_dropout} has no effect: the model reads one modality "
                f"({', '.join(self.spec.modalities)}), and a sample never loses all of them")
            return None
        return partial(drop_modalities, p=self.modality_dropout)

    def epoch_row(self, epoch: int, seed: int, batches: int, world_size: int = 1) -> dict:
        """Columns the data adds to epoch `epoch`'s train row in metrics.csv, the epoch having read `batches`
        batches per rank (data=mixture: how many read each source)."""
        return {}

    def sample_ids(self, split: str, column: str | None = None) -> list:
        """One id per sample of `split`, in order (what `mtlrun predict` writes next to the predictions): the
        sample's index in the split. `column` names an id column of data that has columns (data=table)."""
        if column is not None:
            from mtlrun.errors import UsageError

            raise UsageError(f"id_column={column}: {type(self).__name__} has no columns; its ids are the samples' "
                             f"indices in the split (leave id_column=null)")
        return list(range(len(self.dataset(split))))

    def class_names(self, task: str) -> list | None:
        """The names of a label target's classes, index order (what predictions are written as); None: the
        class indices are the names."""
        return None

    def tagged_words(self, split: str) -> tuple[list[list[str]], list[list[int]]] | None:
        """(the words of each sample of `split`, the token position of each word's first token) for data whose
        tagging targets are tags per word (mtlrun.data.word_tags), so `mtlrun predict` writes a tag per word;
        None: the data has no words."""
        return None

    def target_scale(self, task: str) -> tuple[list[float], list[float]] | None:
        """(mean, std) per output when a regression target was standardised: a prediction x is x * std + mean
        in the data's units; None: the target was not rescaled."""
        return None

    # ------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        problems = self.state_problems(state)
        if problems:
            from mtlrun.errors import UsageError

            raise UsageError(f"data: the checkpoint's data state: {'; '.join(problems)}")

    @classmethod
    def state_problems(cls, state: dict, config: dict | None = None) -> list[str]:
        """What is wrong with a data state read back from a checkpoint or an export, one line each ([]: nothing),
        against the `data` section of its config where given; checked before anything is built from it. A module
        that keeps state overrides this too, where its state can be damaged in a way that would silently change
        the data."""
        if state and cls.load_state_dict is DataModule.load_state_dict:
            return [f"holds {sorted(map(str, state))}; {cls.__name__} keeps no state"]
        return []

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            from mtlrun.errors import UsageError

            raise UsageError(f"split={split!r} is not a split; valid: {', '.join(SPLITS)}")
        if self._splits is None:
            keep = self.selected_modalities()
            self._splits = {name: select_modalities(ds, keep) for name, ds in self.build().items()}
        return self._splits[split]


def _in_turn(steps: Sequence[Callable[[dict], dict]], batch: dict) -> dict:
    for step in steps:
        batch = step(batch)
    return batch


def select_modalities(dataset: Dataset, keep: Sequence[str]) -> Dataset:
    """`dataset` with only the inputs (and modality masks) of `keep`."""
    if isinstance(dataset, TensorDictDataset):
        inputs = dataset.tensors["inputs"]
        if set(inputs) == set(keep):
            return dataset
        masks = dataset.tensors.get("modality_mask", {})
        return TensorDictDataset({m: inputs[m] for m in keep}, dataset.tensors["targets"],
                                 dataset.tensors.get("label_mask"), {m: masks[m] for m in keep if m in masks})
    if hasattr(dataset, "select_modalities"):
        return dataset.select_modalities(keep)
    raise TypeError(f"{type(dataset).__name__} cannot drop modalities: give it select_modalities(keep)")
