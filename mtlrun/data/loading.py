"""DataLoaders for training and evaluation, single process or DDP.

Training shuffles with a DistributedSampler seeded by (seed, epoch), so the order of every epoch is a pure
function of the config: a resumed run sees exactly the batches the uninterrupted run would have seen, and
`skip_batches` drops the ones a mid-epoch checkpoint already consumed. Evaluation shards the split without
padding (rank r takes samples r, r+W, ...), so every sample is counted exactly once across ranks.

An mtlrun error in a worker process (e.g. data=table naming a file that cannot be read) reaches the caller as
the same error, with the same message, as with num_workers=0: torch would re-raise it with the worker's
traceback as its message, so workers send it back as data instead (`_Failed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from mtlrun.errors import ConfigError, MtlrunError, UsageError


def collate(samples):
    """Collate a list of sample dicts; a batch already assembled by `__getitems__` passes through."""
    if isinstance(samples, Mapping):
        return samples
    return default_collate(samples)


class _SkipFirst(Sampler):
    def __init__(self, batch_sampler: BatchSampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class _Shard(Sampler):
    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Failed:
    """An MtlrunError raised while a worker built a batch, as the batch (type, message, exit code)."""

    def __init__(self, error: MtlrunError):
        self.kind, self.message, self.exit_code = type(error), str(error), error.exit_code

    def error(self) -> MtlrunError:
        kind = UsageError if issubclass(self.kind, ConfigError) else self.kind  # ConfigError takes a list
        try:
            error = kind(self.message)
        except TypeError:
            error = UsageError(self.message) if self.exit_code == UsageError.exit_code else MtlrunError(self.message)
        error.exit_code = self.exit_code
        return error


class _CarryErrors(Dataset):
    """The dataset as a worker reads it: an MtlrunError becomes a `_Failed` batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        try:
            if hasattr(self.dataset, "__getitems__"):
                return self.dataset.__getitems__(indices)
            return [self.dataset[i] for i in indices]
        except MtlrunError as error:
            return _Failed(error)


def _collate(items):
    return items if isinstance(items, _Failed) else collate(items)


class _Loader(DataLoader):
    """A DataLoader whose workers' mtlrun errors are raised in the caller as they were raised in the worker."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _Failed):
                raise batch.error()
            yield batch


def _loader(dataset: Dataset, batch_sampler: Sampler, num_workers: int, pin_memory: bool,
            persistent: bool = False) -> DataLoader:
    if num_workers == 0:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=0,
                          pin_memory=pin_memory, persistent_workers=False)
    return _Loader(_CarryErrors(dataset), batch_sampler=batch_sampler, collate_fn=_collate, num_workers=num_workers,
                   pin_memory=pin_memory, persistent_workers=persistent)


class EpochBatches(Sampler):
    """The training batches of one epoch (as `train_loader` gives them), re-aimed at the next epoch with
    `aim`: the batch sampler of a loader whose worker processes live across epochs (persistent_workers).
    Batches are drawn in the main process, so changing the epoch here is all the workers need."""

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int, world_size: int, drop_last: bool):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.drop_last, self.skip = batch_size, drop_last and len(self.sampler) >= batch_size, 0

    def aim(self, epoch: int, skip_batches: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip_batches

    def _batches(self) -> BatchSampler:
        return BatchSampler(self.sampler, self.batch_size, drop_last=self.drop_last)

    def __iter__(self):
        return itertools.islice(iter(self._batches()), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.skip)


def persistent_train_loader(dataset: Dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                            drop_last: bool = True, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A training loader whose `num_workers` processes serve every epoch: `loader.batch_sampler.aim(epoch,
    skip_batches)` before each, then the same batches as `train_loader(..., epoch=epoch)`."""
    batches = EpochBatches(dataset, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           drop_last=drop_last)
    return _loader(dataset, batches, num_workers, pin_memory, persistent=True)


def train_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, skip_batches: int = 0, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    batches: Sampler = BatchSampler(sampler, batch_size, drop_last=drop_last and len(sampler) >= batch_size)
    if skip_batches:
        batches = _SkipFirst(batches, skip_batches)
    return _loader(dataset, batches, num_workers, pin_memory)


def eval_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    batches = BatchSampler(_Shard(len(dataset), rank, world_size), batch_size, drop_last=False)
    return _loader(dataset, batches, num_workers, pin_memory, persistent=persistent)


def to_device(batch, device: torch.device):
    """Move a (nested) batch dict to `device`; asynchronous from pinned memory."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
