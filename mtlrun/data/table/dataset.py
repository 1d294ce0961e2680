"""One split of a table as a Dataset: table values in memory, files read per batch or cached, augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtlrun.data import media
from mtlrun.data.table.manifest import _where
from mtlrun.errors import UsageError


# ----------------------------------------------------------------------------------------- file reading
@dataclass(frozen=True)
class Reader:
    """Reads one file of a file column into its per-sample layout (see mtlrun.data.media)."""

    type: str  # image | audio | segmentation | depth
    size: tuple[int, int] | None = None
    channels: int = 3
    num_classes: int = 0
    ignore_index: int | None = None
    png_scale: float = 0.001
    sample_rate: int = 0
    num_samples: int = 0

    def __call__(self, path: str) -> torch.Tensor:
        if self.type == "image":
            return media.load_image(path, self.size, self.channels)
        if self.type == "segmentation":
            return media.load_mask(path, self.size, self.num_classes, self.ignore_index)
        if self.type == "depth":
            return media.load_depth(path, self.size, self.png_scale)
        return media.load_audio(path, self.sample_rate, self.num_samples)

    @property
    def shape(self) -> tuple[int, ...]:
        h_w = tuple(self.size or ())
        return {"image": (self.channels, *h_w), "segmentation": h_w, "depth": (1, *h_w),
                "audio": (self.num_samples,)}[self.type]

    @property
    def stored_dtype(self) -> torch.dtype:
        """What the cache keeps: uint8 pixels, int16 class ids (-1 = ignore), float32 otherwise."""
        return {"image": torch.uint8, "segmentation": torch.int16}.get(self.type, torch.float32)

    def blank(self, n: int) -> torch.Tensor:
        """Placeholder rows for empty cells: zeros for inputs, -1 / NaN for targets (never a label)."""
        if self.type == "segmentation":
            return torch.full((n, *self.shape), -1, dtype=torch.int64)
        if self.type == "depth":
            return torch.full((n, *self.shape), float("nan"))
        return torch.zeros((n, *self.shape), dtype=self.stored_dtype)


@dataclass
class FileColumn:
    """The files of one field in one split: paths ('' = empty cell), where each came from, an optional cache."""

    role: str
    name: str
    reader: Reader
    paths: np.ndarray  # str [N]
    rows: np.ndarray  # int [N] manifest row of each sample
    origin: tuple  # (manifest path, row numbers, lines or None, column): for messages at load time
    cache: torch.Tensor | None = None

    def describe(self, i: int) -> str:
        return _where(self.origin, int(self.rows[i]))

    def read(self, i: int) -> torch.Tensor:
        try:
            return self.reader(str(self.paths[i]))
        except (media.MediaError, OSError) as exc:
            raise UsageError(f"data=table: {self.describe(i)}: cannot read {self.reader.type} file "
                             f"{self.paths[i]}: {exc}") from None

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        if self.cache is not None:
            out = self.cache.index_select(0, torch.as_tensor(indices, dtype=torch.long))
            return out.long() if self.reader.type == "segmentation" else out
        n = len(indices)
        out = self.reader.blank(n)
        for j, i in enumerate(indices):
            if self.paths[i]:
                out[j] = self.read(int(i))
        return out


class _DecodeAll(Dataset):
    """Every non-empty file of a column, decoded, each as (tensor, None) or (None, problem)."""

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


def _passthrough(items):
    return items



# ----------------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augment:
    """Train-time augmentation drawn once per sample and applied alike to all its images, masks and depth maps.

    `hflip`: horizontal flip with probability 1/2. `crop_scale` [lo, hi]: a random resized crop keeping a
    fraction lo..hi of the area, aspect ratio 3/4..4/3, resized back. Both act on the normalised coordinates
    of every tensor, so inputs and dense targets of different resolutions stay aligned; images are
    resampled bilinearly, masks and depth by nearest neighbour (no class id or depth is ever blended).
    Draws come from torch's global RNG, in this order: flips [B], then scale, ratio, top, left [B] each.
    """

    hflip: bool = False
    crop_scale: tuple[float, float] | None = None

    def __bool__(self) -> bool:
        return self.hflip or self.crop_scale is not None

    def theta(self, b: int) -> torch.Tensor:
        """[B, 2, 3] affine maps from output to input normalised coordinates."""
        sx, sy, tx, ty = torch.ones(b), torch.ones(b), torch.zeros(b), torch.zeros(b)
        flip = torch.rand(b) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * torch.rand(b)
            ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(b))
            sx = torch.sqrt(area * ratio).clamp(max=1.0)  # the crop's width and height, as fractions
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            top, left = torch.rand(b) * (1 - sy), torch.rand(b) * (1 - sx)
            tx, ty = -1 + 2 * left + sx, -1 + 2 * top + sy
        sx = torch.where(flip, -sx, sx)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        return theta

    @staticmethod
    def apply(x: torch.Tensor, theta: torch.Tensor, nearest: bool) -> torch.Tensor:
        """x [B, C, H, W] (or [B, H, W] for masks) resampled through theta, same size and dtype."""
        squeeze = x.dim() == 3
        src = (x.unsqueeze(1) if squeeze else x).to(torch.float32)
        grid = F.affine_grid(theta, list(src.shape), align_corners=False)
        out = F.grid_sample(src, grid, mode="nearest" if nearest else "bilinear", padding_mode="border",
                            align_corners=False)
        out = out.squeeze(1) if squeeze else out
        return out.round().to(x.dtype) if not x.is_floating_point() else out



# ----------------------------------------------------------------------------------------- the dataset
class TableDataset(Dataset):
    """One split: in-memory tensors for table values, files decoded per batch (or from the cache).

    `__getitems__` builds a whole batch in the batch-dict layout; nothing is held open between calls,
    so DataLoader workers are safe. Images are normalised after augmentation; an empty image cell gives
    zeros (its modality_mask is False)."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], files: list[FileColumn], length: int,
                 normalise: dict[str, tuple[torch.Tensor, torch.Tensor]], augment: Augment | None = None):
        self.tensors, self.files, self.length = tensors, files, length
        self.normalise, self.augment = normalise, augment

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices: Sequence[int]) -> dict:
        indices = [int(i) for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {group: {name: t.index_select(0, idx) for name, t in d.items()} for group, d in self.tensors.items()}
        for column in self.files:
            batch[column.role][column.name] = column.gather(indices)
        images = [c.name for c in self.files if c.reader.type == "image"]
        for name in images:
            batch["inputs"][name] = batch["inputs"][name].to(torch.float32).div_(255.0)
        if self.augment:
            theta = self.augment.theta(len(indices))
            for column in self.files:
                if column.reader.type != "audio":
                    group = batch[column.role]
                    group[column.name] = Augment.apply(group[column.name], theta, nearest=column.reader.type != "image")
        for name in images:
            mean, std = self.normalise[name]
            x = batch["inputs"][name].sub_(mean).div_(std)
            present = batch.get("modality_mask", {}).get(name)
            if present is not None:
                x.mul_(present.view(-1, 1, 1, 1).to(x.dtype))
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
        return TableDataset(tensors, files, self.length, self.normalise, self.augment)
