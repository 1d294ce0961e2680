"""DataLoaders for training and evaluation, single process or DDP.

Training shuffles with a DistributedSampler seeded by (seed, epoch), so the order of every epoch is a pure
function of the config: a resumed run sees exactly the batches the uninterrupted run would have seen, and
`skip_batches` drops the ones a mid-epoch checkpoint already consumed. Evaluation shards the split without
padding (rank r takes samples r, r+W, ...), so every sample is counted exactly once across ranks.
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from mtlrun.data.base import collate


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


def _loader(dataset: Dataset, batch_sampler: Sampler, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)


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
                pin_memory: bool = False) -> DataLoader:
    batches = BatchSampler(_Shard(len(dataset), rank, world_size), batch_size, drop_last=False)
    return _loader(dataset, batches, num_workers, pin_memory)


def to_device(batch, device: torch.device):
    """Move a (nested) batch dict to `device`; asynchronous from pinned memory."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
