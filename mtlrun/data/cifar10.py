"""`cifar10`: CIFAR-10 from the standard python layout on disk (nothing is downloaded unless asked).

Files: `<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}`, the pickled dicts of the official
archive https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (b"data": uint8 [N, 3072] in
channel-major RGB order, b"labels": N ints in 0..9). `data.download=true` fetches and extracts that
archive with torchvision into `<root>` when the files are missing.

Splits: test is the official test_batch (10,000 images). Val is `val_size` images held out from the
50,000 training images by a stratified split seeded by `seed` (per class, exactly its share of
`val_size`, largest remainders first), train is the rest; both are pure functions of (val_size, seed).
`limit` keeps the first `limit` samples of each split (in file order) for quick runs.

Targets (both always present; the `tasks` preset picks which are trained):
- `class`: the CIFAR-10 class (classification, 10 classes, the official label order: CLASSES);
- `vehicle`: 1 for airplane, automobile, ship, truck; 0 for the six animals (binary, float [N]).

Images stay uint8 in memory (150 MB for 50k, against 600 MB as float32); each batch is converted and
normalised with the CIFAR-10 per-channel mean/std on the fly (`UInt8ImageDataset.__getitems__`).
`augment=true` adds, on the training split only, a random 32x32 crop of the image zero-padded by 4 pixels
on each side and a horizontal flip with probability 1/2 (the standard CIFAR recipe), vectorised over the
batch and drawn from torch's global RNG. That RNG is seeded by the run's `seed` and saved in
checkpoints, so with `num_workers=0` (the default) a resumed run sees exactly the same crops and flips
as an uninterrupted one; with workers, each worker draws from its own RNG seeded by the loader
(reproducible from the run's seed, but a mid-epoch resume restarts the workers' streams).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlrun.checks import is_int
from mtlrun.data._download import UInt8ImageDataset, check_limit, fetch_if_missing, resolve_root
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.errors import ConfigError, UsageError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
VEHICLES = ("airplane", "automobile", "ship", "truck")
# Per-channel mean and standard deviation of the 50,000 training images, pixels scaled to [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SIDE = 32
PADDING = 4
TARGETS = {"class": TargetInfo("classification", num_classes=len(CLASSES)),
           "vehicle": TargetInfo("binary", dim=1)}


def random_crop_flip(images: torch.Tensor, padding: int = PADDING) -> torch.Tensor:
    """Random crop of the zero-padded batch back to its size, then a horizontal flip with p = 1/2.

    images: [B, C, H, W] (any dtype; uint8 here). One gather over the flattened padded pixels for the whole
    batch, the flip folded into the column indices (~0.5 ms for 128 CIFAR images on one core). Draws from
    torch's global RNG, in this order: row offsets [B], column offsets [B], flips [B].
    """
    b, c, h, w = images.shape
    padded_w = w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding)).reshape(b, c, -1)
    dy = torch.randint(0, 2 * padding + 1, (b,))
    dx = torch.randint(0, 2 * padding + 1, (b,))
    flip = torch.rand(b) < 0.5
    rows = dy[:, None] + torch.arange(h)  # [B, H]
    cols = dx[:, None] + torch.arange(w)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, index).reshape(b, c, h, w)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, sorted: each class gives val its share of `val_size` (largest remainders
    get the leftover), chosen by a permutation seeded by `seed`."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * val_size / len(labels)
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: val_size - take.sum()]] += 1
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, take)])
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] of one pickled CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
    except Exception as exc:
        raise UsageError(f"data=cifar10: cannot read {path} as a CIFAR-10 python batch (a pickled dict with "
                         f"b'data' and b'labels'): {type(exc).__name__}: {exc}; re-extract {URL}") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(labels) != len(data):
        raise UsageError(f"data=cifar10: {path} is not a CIFAR-10 batch: expected b'data' uint8 [N, 3072] and N "
                         f"labels, got data {data.dtype} {list(data.shape)} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UsageError(f"data=cifar10: {path} has labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, SIDE, SIDE), labels


class CIFAR10(DataModule):
    name = "cifar10"

    def __init__(self, root: str = "data", download: bool = False, val_size: int = 5000, seed: int = 0,
                 augment: bool = False, limit: int | None = None, **loader):
        super().__init__(**loader)
        problems = []
        if not is_int(val_size) or val_size < 1:
            problems.append(f"data.val_size={val_size}: must be an integer >= 1 (training images held out "
                            f"for validation)")
        if not is_int(seed) or seed < 0:
            problems.append(f"data.seed={seed}: must be an integer >= 0 (seeds the train/val split)")
        for key, value in (("download", download), ("augment", augment)):
            if not isinstance(value, bool):
                problems.append(f"data.{key}={value}: must be true or false")
        check_limit(limit, problems)
        if problems:
            raise ConfigError(problems)
        self.root = resolve_root(root)
        self.download = download
        self.val_size, self.seed, self.augment, self.limit = val_size, seed, augment, limit
        if not download:
            self._check_files()  # fail before the model is built, not at the first batch

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _missing(self) -> list[Path]:
        if not self.folder.is_dir():
            return [self.folder]
        return [self.folder / name for name in (*TRAIN_FILES, TEST_FILE) if not (self.folder / name).is_file()]

    def _check_files(self) -> None:
        missing = self._missing()
        if missing:
            what = (f"the folder {missing[0].resolve()}" if missing == [self.folder]
                    else f"{', '.join(str(p.resolve()) for p in missing)}")
            raise UsageError(f"data=cifar10: CIFAR-10 not found under data.root={self.root}: missing {what}. "
                             f"Download {URL} and extract it into {self.root.resolve()} (tar -xzf "
                             f"cifar-10-python.tar.gz -C {self.root}, which creates {FOLDER}/ there), set "
                             f"data.root to the folder that holds {FOLDER}/, or pass data.download=true to "
                             f"fetch it (163 MB) with torchvision")

    def _fetch(self) -> None:
        import torchvision

        def fetch():
            self.root.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.CIFAR10(str(self.root), train=True, download=True)

        manual = (f"Download {URL} by hand and extract it into {self.root.resolve()} (tar -xzf "
                  f"cifar-10-python.tar.gz -C {self.root}), then run again with data.download=false")
        fetch_if_missing("CIFAR-10", self._missing, fetch, manual)

    @property
    def full_spec(self) -> DataSpec:
        image = ModalityInfo("image", (3, SIDE, SIDE), {"in_channels": 3, "input_size": (SIDE, SIDE)})
        return DataSpec(modalities={"image": image}, targets=dict(TARGETS))

    def build(self) -> dict[str, UInt8ImageDataset]:
        if self.download:
            self._fetch()
        self._check_files()
        parts = [_load_batch(self.folder / name) for name in TRAIN_FILES]
        train_images = np.concatenate([p[0] for p in parts])
        train_labels = np.concatenate([p[1] for p in parts])
        test_images, test_labels = _load_batch(self.folder / TEST_FILE)
        if self.val_size >= len(train_labels):
            raise UsageError(f"data.val_size={self.val_size}: must be smaller than the {len(train_labels)} "
                             f"training images it is held out from")
        train_idx, val_idx = stratified_split(train_labels, self.val_size, self.seed)
        vehicle = torch.zeros(len(CLASSES))
        vehicle[[CLASSES.index(c) for c in VEHICLES]] = 1.0
        splits = {}
        for split, images, labels, idx in (("train", train_images, train_labels, train_idx),
                                           ("val", train_images, train_labels, val_idx),
                                           ("test", test_images, test_labels, np.arange(len(test_labels)))):
            idx = idx[: self.limit]
            cls = torch.from_numpy(labels[idx])
            targets = {"class": cls, "vehicle": vehicle[cls]}
            augment = random_crop_flip if self.augment and split == "train" else None
            splits[split] = UInt8ImageDataset(torch.from_numpy(np.ascontiguousarray(images[idx])), targets,
                                              MEAN, STD, augment=augment)
        return splits
