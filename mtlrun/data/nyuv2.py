"""`nyuv2`: NYUv2 (13-class segmentation, depth, surface normals) in the preprocessed layout of MTAN / LibMTL.

Nothing is downloaded. Files, under `root` (the unzipped folder of the MTAN repo's preprocessed NYUv2,
https://github.com/lorenmt/mtan: MTAN_URL, or LibMTL's copy LIBMTL_URL, 288x384):

    <root>/train/{image,label,depth,normal}/<i>.npy     795 samples
    <root>/val/{image,label,depth,normal}/<i>.npy       654 samples

with, for every integer name <i>, one file in each of the four folders (as mtan/im2im_pred/create_dataset.py
and LibMTL/examples/nyu/create_dataset.py read them):
- image/<i>.npy: float [H, W, 3], RGB in [0, 1];
- label/<i>.npy: [H, W] (float or int) class ids 0..12, -1 = no label;
- depth/<i>.npy: float [H, W, 1] (or [H, W]) metres, 0 = no measurement;
- normal/<i>.npy: float [H, W, 3] unit normals with components in [-1, 1], all zero where missing.
Every file's header is checked when the splits are built (shape, dtype, same H x W in the four files), and
the values when it is read (labels integral in -1..12, finite values, depth >= 0): a problem names the file.

Splits: the layout has train and val only, so `val` (654) is the test split, and a seeded `val_size`
(a fraction of train, or a count) of train is held out as val; train is the rest (pure function of
val_size and seed).

Samples: input `image` float [3, H, W] in [0, 1] (not normalised, as in MTAN); targets `segmentation`
long [H, W] (-1 kept: Segmentation(ignore_index=-1) skips those pixels), `depth` float [1, H, W],
`normals` float [3, H, W]. `image_size` ([H, W] or an int for a square; null keeps the files' size)
resizes when a sample is read: the image bilinearly (antialiased), labels, depth and normals with nearest
neighbour, so no label, missing-depth or missing-normal pixel is blended with a valid one.

`cache=true` reads every file once into memory (image and normals as float16, labels as int8, depth
float32: about 1.9 MB per 288x384 sample, 2.7 GB for all 1,449; float16 rounds by at most 2.5e-4);
otherwise each batch reads its files (use data.num_workers).

`augment=true` (train split only), the augmentation of LibMTL's NYUv2 example (credited there to MTAN
issue #34): per sample a random crop of 1/s of each side, s drawn from (1.0, 1.2, 1.5), scaled back to
the full size (image bilinear; labels, depth, normals nearest), depth divided by s (zooming in brings the
scene closer), then a horizontal flip with probability 1/2 (which negates the normals' x component).
Vectorised over the batch (one affine grid) and drawn from torch's global RNG, seeded by the run's seed
and saved in checkpoints (with num_workers=0 a resumed run sees the same augmentations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtlrun.checks import is_int
from mtlrun.data._download import resolve_root
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.scenes import DenseDataset, image_size_pair
from mtlrun.errors import ConfigError, UsageError

MTAN_URL = "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=0"
LIBMTL_URL = "https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0"
FOLDERS = ("image", "label", "depth", "normal")
NUM_CLASSES = 13
IGNORE = -1
SPLIT_DIRS = {"train": "train", "test": "val"}  # val is carved out of train
SCALES = (1.0, 1.2, 1.5)
MAX_SHOWN = 10


def manual_steps(root: Path) -> str:
    return (f"NYUv2 is not downloaded automatically (data.download=true is not available for it): download "
            f"the preprocessed NYUv2 of MTAN (https://github.com/lorenmt/mtan: {MTAN_URL}; or LibMTL's copy "
            f"{LIBMTL_URL}) and unzip it so that {root}/train/ and {root}/val/ each hold the folders "
            f"{', '.join(f + '/' for f in FOLDERS)} of <i>.npy files; or point data.root at that folder")


def _shown(items: list[str]) -> str:
    more = f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
    return ", ".join(items[:MAX_SHOWN]) + more


def list_samples(split_dir: Path) -> list[str]:
    """The integer names <i> of split_dir/image/<i>.npy, in numeric order, each present in all folders."""
    names = {}
    odd = []
    for path in (split_dir / "image").glob("*.npy"):
        if path.stem.isdigit():
            names[path.stem] = int(path.stem)
        else:
            odd.append(path.name)
    if odd:
        raise UsageError(f"data=nyuv2: {split_dir / 'image'} holds files not named <integer>.npy: "
                         f"{_shown(sorted(odd))}")
    if not names:
        raise UsageError(f"data=nyuv2: no <i>.npy files in {(split_dir / 'image').resolve()}. "
                         f"{manual_steps(split_dir.parent)}")
    ordered = sorted(names, key=names.get)
    for folder in FOLDERS[1:]:
        present = {p.name for p in (split_dir / folder).glob("*.npy")}
        missing = [f"{name}.npy" for name in ordered if f"{name}.npy" not in present]
        if missing:
            raise UsageError(f"data=nyuv2: {len(missing)} file(s) of {split_dir / 'image'} have no counterpart in "
                             f"{(split_dir / folder).resolve()}: {_shown(missing)} (every <i>.npy needs one file "
                             f"in each of {', '.join(FOLDERS)})")
    return ordered


def _open(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped (only the header is read now)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated, not a .npy, pickled object array: all unusable
        raise UsageError(f"data=nyuv2: cannot read {path}: {type(exc).__name__}: {exc}. The file is corrupt or "
                         f"not a NumPy .npy array; restore it from the preprocessed NYUv2 archive") from exc


def check_header(split_dir: Path, name: str) -> tuple[int, int]:
    """(H, W) of sample `name`, after checking the shape and dtype of its four files."""
    arrays = {folder: _open(split_dir / folder / f"{name}.npy") for folder in FOLDERS}
    h, w = arrays["image"].shape[:2] if arrays["image"].ndim == 3 else (None, None)
    expected = {"image": [(h, w, 3)], "label": [(h, w)], "depth": [(h, w, 1), (h, w)], "normal": [(h, w, 3)]}
    for folder, array in arrays.items():
        path = split_dir / folder / f"{name}.npy"
        if h is None or array.shape not in expected[folder]:
            layout = {"image": "[H, W, 3]", "label": "[H, W]", "depth": "[H, W, 1]", "normal": "[H, W, 3]"}[folder]
            size = f" with H x W = {h} x {w} as in the image" if h is not None and folder != "image" else ""
            raise UsageError(f"data=nyuv2: {path} has shape {list(array.shape)}; expected {layout}{size}")
        if array.dtype.kind not in ("f", "i", "u") or (folder != "label" and array.dtype.kind != "f"):
            kinds = "a float or integer" if folder == "label" else "a float"
            raise UsageError(f"data=nyuv2: {path} has dtype {array.dtype}; expected {kinds} array")
    return h, w


def _read(path: Path) -> np.ndarray:
    array = _open(path)
    try:
        return np.array(array)
    except Exception as exc:  # a file shorter than its header says
        raise UsageError(f"data=nyuv2: cannot read the data of {path}: {type(exc).__name__}: {exc}") from exc


def load_sample(split_dir: Path, name: str, size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """One sample as float image [3, H, W], long segmentation [H, W], depth [1, H, W], normals [3, H, W]."""
    paths = {folder: split_dir / folder / f"{name}.npy" for folder in FOLDERS}
    image, label, depth, normal = (_read(paths[f]) for f in FOLDERS)
    for folder, array in (("image", image), ("depth", depth), ("normal", normal), ("label", label)):
        if not np.isfinite(array).all():
            raise UsageError(f"data=nyuv2: {paths[folder]} holds NaN or infinite values")
    bad = label[(label != np.round(label)) | (label < IGNORE) | (label >= NUM_CLASSES)]
    if bad.size:
        raise UsageError(f"data=nyuv2: {paths['label']} holds {bad.size} value(s) that are not class ids 0.."
                         f"{NUM_CLASSES - 1} or {IGNORE} (no label), e.g. {np.unique(bad)[:5].tolist()}")
    if (depth < 0).any():
        raise UsageError(f"data=nyuv2: {paths['depth']} holds negative depths (0 means no measurement)")
    sample = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1),
              "segmentation": torch.from_numpy(label.astype(np.int64)),
              "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).reshape(1, *label.shape),
              "normals": torch.from_numpy(np.ascontiguousarray(normal, dtype=np.float32)).permute(2, 0, 1)}
    if size is not None and tuple(label.shape) != tuple(size):
        sample = resize(sample, size)
    return {k: v.contiguous() for k, v in sample.items()}


def resize(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Image bilinear (antialiased when shrinking); labels, depth and normals nearest neighbour."""
    def nearest(x):
        return F.interpolate(x[None].float(), size=size, mode="nearest-exact")[0]

    return {"image": F.interpolate(sample["image"][None], size=size, mode="bilinear", align_corners=False,
                                   antialias=True)[0].clamp(0, 1),
            "segmentation": nearest(sample["segmentation"][None])[0].long(),
            "depth": nearest(sample["depth"]), "normals": nearest(sample["normals"])}


def random_scale_crop_flip(batch: dict, scales: Sequence[float] = SCALES) -> dict:
    """MTAN/LibMTL's NYUv2 augmentation on a whole batch (see the module docstring); draws, from torch's
    global RNG, in this order: scale indices [B], row offsets [B], column offsets [B], flips [B]."""
    image, seg = batch["inputs"]["image"], batch["targets"]["segmentation"]
    depth, normals = batch["targets"]["depth"], batch["targets"]["normals"]
    b, _, h, w = image.shape
    scale = torch.tensor(scales, dtype=torch.float32)[torch.randint(len(scales), (b,))]
    frac = 1.0 / scale  # side of the crop, as a fraction of the image's
    top, left = torch.rand(b) * (1 - frac), torch.rand(b) * (1 - frac)
    flip = torch.rand(b) < 0.5
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -frac, frac)
    theta[:, 0, 2] = 2 * left - 1 + frac  # normalised x of the crop's centre
    theta[:, 1, 1] = frac
    theta[:, 1, 2] = 2 * top - 1 + frac
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)

    def sample(x, mode):
        return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)

    normals = sample(normals, "nearest")
    normals = torch.cat([torch.where(flip.view(b, 1, 1, 1), -normals[:, :1], normals[:, :1]), normals[:, 1:]], 1)
    targets = dict(batch["targets"])
    targets.update({"segmentation": sample(seg[:, None].float(), "nearest")[:, 0].long(),
                    "depth": sample(depth, "nearest") / scale.view(b, 1, 1, 1), "normals": normals})
    return {**batch, "inputs": {**batch["inputs"], "image": sample(image, "bilinear").clamp(0, 1)},
            "targets": targets}


class NYUv2Files(Dataset):
    """NYUv2 samples read from their .npy files at every fetch (nothing kept open between fetches)."""

    def __init__(self, split_dir: Path, names: Sequence[str], size: tuple[int, int] | None,
                 augment: Callable[[dict], dict] | None = None):
        self.split_dir, self.names, self.size, self.augment = split_dir, np.array(names), size, augment

    def __len__(self) -> int:
        return len(self.names)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        samples = [load_sample(self.split_dir, str(self.names[int(i)]), self.size) for i in indices]
        batch = {"inputs": {"image": torch.stack([s["image"] for s in samples])},
                 "targets": {t: torch.stack([s[t] for s in samples]) for t in ("segmentation", "depth", "normals")}}
        return self.augment(batch) if self.augment is not None else batch

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: {name: t[0] for name, t in group.items()} for k, group in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> NYUv2Files:
        if list(keep) != ["image"]:
            raise ValueError(f"this dataset has only the modality 'image', asked for {list(keep)}")
        return self


class _Augmented(DenseDataset):
    def __init__(self, inputs, targets, augment: Callable[[dict], dict] | None = None):
        super().__init__(inputs, targets)
        self.augment = augment

    def __getitems__(self, indices):
        batch = super().__getitems__(indices)
        return self.augment(batch) if self.augment is not None else batch

    def select_modalities(self, keep):
        if list(keep) != ["image"]:
            raise ValueError(f"this dataset has only the modality 'image', asked for {list(keep)}")
        return self


class NYUv2(DataModule):
    name = "nyuv2"

    def __init__(self, root: str = "data/nyuv2", val_size: float = 0.1, seed: int = 0, image_size=None,
                 cache: bool = False, augment: bool = False, download: bool = False, **loader):
        super().__init__(**loader)
        problems: list[str] = []
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size <= 0 \
                or (isinstance(val_size, float) and val_size >= 1):
            problems.append(f"data.val_size={val_size}: must be a fraction in (0, 1) of the 795 training images "
                            f"or a count >= 1 (held out of train as the val split; NYUv2's val is the test split)")
        size = None if image_size is None else image_size_pair(image_size, "data.image_size", problems)
        for key, value in (("cache", cache), ("augment", augment), ("download", download)):
            if not isinstance(value, bool):
                problems.append(f"data.{key}={value}: must be true or false")
        if not is_int(seed):
            problems.append(f"data.seed={seed}: must be an integer")
        if problems:
            raise ConfigError(problems)
        self.root = resolve_root(root)
        if download:
            raise UsageError(f"data.download=true: {manual_steps(self.root)}")
        self.val_size, self.seed, self.image_size = val_size, seed, size
        self.cache, self.augment = cache, augment
        self._file_size = self._check_files()  # fail before the model is built, not at the first batch

    def _check_files(self) -> tuple[int, int]:
        missing = []
        for split in SPLIT_DIRS.values():  # a whole split folder missing is named once, not per subfolder
            folders = [self.root / split] if not (self.root / split).is_dir() else \
                [self.root / split / folder for folder in FOLDERS]
            missing += [f"{p.resolve()}/" for p in folders if not p.is_dir()]
        if missing:
            raise UsageError(f"data=nyuv2: NYUv2 not found under data.root={self.root}: missing {_shown(missing)}. "
                             f"{manual_steps(self.root)}")
        first = list_samples(self.root / "train")[0]
        return check_header(self.root / "train", first)

    @property
    def full_spec(self) -> DataSpec:
        h, w = self.image_size or self._file_size
        image = ModalityInfo("image", (3, h, w), {"in_channels": 3, "input_size": (h, w)})
        return DataSpec(modalities={"image": image},
                        targets={"segmentation": TargetInfo("segmentation", num_classes=NUM_CLASSES),
                                 "depth": TargetInfo("depth", dim=1), "normals": TargetInfo("normals", dim=3)})

    def split_names(self) -> dict[str, tuple[Path, list[str]]]:
        train_dir, test_dir = self.root / SPLIT_DIRS["train"], self.root / SPLIT_DIRS["test"]
        train = list_samples(train_dir)
        n_val = round(self.val_size * len(train)) if isinstance(self.val_size, float) else self.val_size
        if not 1 <= n_val < len(train):
            raise UsageError(f"data.val_size={self.val_size}: holds out {n_val} of the {len(train)} training samples "
                             f"in {train_dir}; it must leave at least one sample in both val and train")
        order = np.random.default_rng([self.seed, 31_337]).permutation(len(train))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        return {"train": (train_dir, [train[i] for i in train_idx]), "val": (train_dir, [train[i] for i in val_idx]),
                "test": (test_dir, list_samples(test_dir))}

    def _check_sizes(self, split_dir: Path, names: list[str]) -> None:
        reference = self._file_size
        for name in names:
            hw = check_header(split_dir, name)
            if self.image_size is None and hw != reference:
                raise UsageError(f"data=nyuv2: {split_dir / 'image' / f'{name}.npy'} is {hw[0]}x{hw[1]} but the "
                                 f"first training image is {reference[0]}x{reference[1]}; set data.image_size=[H, W] "
                                 f"to resize every sample to one size")

    def _load_all(self, split_dir: Path, names: list[str]) -> tuple[dict, dict]:
        samples = [load_sample(split_dir, name, self.image_size) for name in names]

        def stack(key, dtype):
            return torch.stack([s[key] for s in samples]).to(dtype)

        return ({"image": stack("image", torch.float16)},
                {"segmentation": stack("segmentation", torch.int8), "depth": stack("depth", torch.float32),
                 "normals": stack("normals", torch.float16)})

    def build(self) -> dict[str, Dataset]:
        splits: dict[str, Dataset] = {}
        for split, (split_dir, names) in self.split_names().items():
            self._check_sizes(split_dir, names)
            augment = random_scale_crop_flip if self.augment and split == "train" else None
            if self.cache:
                splits[split] = _Augmented(*self._load_all(split_dir, names), augment=augment)
            else:
                splits[split] = NYUv2Files(split_dir, names, self.image_size, augment=augment)
        return splits
