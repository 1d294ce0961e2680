"""Shared pieces of the on-disk image datasets (cifar10, celeba): option checks, opt-in downloads and an
in-memory uint8 image dataset that converts and normalises a whole batch at once.

Nothing here downloads unless a config says `data.download=true`; a dataset whose files are missing
otherwise stops with a UsageError that names the path it looked for and how to get the files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mtlrun.checks import is_int
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")


def check_limit(limit, problems: list[str]) -> None:
    if limit is not None and (not is_int(limit) or limit < 1):
        problems.append(f"data.limit={limit}: must be null (every sample) or an integer >= 1 (at most that "
                        f"many samples per split, for quick runs)")


def resolve_root(root) -> Path:
    """`data.root` as a path: `~` expanded, relative paths taken from the current directory."""
    return Path(str(root)).expanduser()


def fetch_if_missing(name: str, missing: Callable[[], list], fetch: Callable[[], object], manual: str) -> None:
    """`data.download=true`: run `fetch` (a torchvision download) if `missing()` lists anything.

    Under DDP only rank 0 downloads, and rank 0's view decides for every rank, so the ranks never race on
    the same files nor wait at different collectives; a failure is raised on every rank alike. (Several
    nodes without shared storage: download once per node beforehand.) Any failure becomes a UsageError
    with `manual`, the steps to get the files by hand.
    """
    from mtlrun.distributed import broadcast_object, dist_info

    if not broadcast_object(bool(missing())):
        return
    error = None
    if dist_info().is_main:
        log.info(f"data.download=true: fetching {name} (once; later runs find the files on disk)")
        try:
            fetch()
        except Exception as exc:  # noqa: BLE001 - network, checksum, quota page, disk full: all reported
            error = (f"data.download=true: downloading {name} failed ({type(exc).__name__}: {exc}).\n"
                     f"{manual}")
    error = broadcast_object(error)
    if error:
        raise UsageError(error)


def normaliser(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that uint8 pixels p map to (p / 255 - mean) / std as p * scale - shift."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t


def normalise(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] -> normalised float32, in one pass over a fresh tensor."""
    return images.to(torch.float32).mul_(scale).sub_(shift)


class UInt8ImageDataset(Dataset):
    """Images kept as uint8 [N, C, H, W] (4x smaller than float32), converted and normalised per batch.

    Samples and batches use the batch-dict layout {"inputs": {"image": float [.., C, H, W]},
    "targets": {task: Tensor}}. `__getitems__` gathers a whole batch with one index_select per tensor,
    applies `augment` (uint8 [B, C, H, W] -> same, e.g. random crop + flip) and normalises it at once;
    `__getitem__` does the same for a single sample.
    """

    def __init__(self, images: torch.Tensor, targets: dict[str, torch.Tensor], mean: Sequence[float],
                 std: Sequence[float], augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        bad = {name: len(t) for name, t in targets.items() if len(t) != len(images)}
        if bad:
            raise ValueError(f"targets must have one row per image ({len(images)}), got {bad}")
        self.images = images
        self.targets = targets
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale, self.shift = normaliser(mean, std)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images.index_select(0, idx)
        if self.augment is not None:
            images = self.augment(images)
        return {"inputs": {"image": normalise(images, self.scale, self.shift)},
                "targets": {name: t.index_select(0, idx) for name, t in self.targets.items()}}

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: {name: t[0] for name, t in group.items()} for k, group in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> UInt8ImageDataset:
        if list(keep) != ["image"]:
            raise ValueError(f"this dataset has only the modality 'image', asked for {list(keep)}")
        return self
