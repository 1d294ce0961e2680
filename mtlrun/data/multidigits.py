"""`multidigits`: a MultiMNIST-style benchmark made from scikit-learn's real handwritten digits.

Two 8x8 digits (scikit-learn's `load_digits`, shipped with the package: nothing is downloaded) are
overlaid on a 16x16 canvas: the left one jittered near the left edge, the right one shifted 3-5 pixels to
its right and up to 2 pixels up or down, so their boxes always overlap by at least a quarter of a digit's
area (at least 18 of 64 pixels). Pixels are combined with max, as in MultiMNIST.

Targets (all always present; the `tasks` preset picks which are trained, `left` + `right` by default):
- `left`, `right`: the class of each digit (classification, 10 classes);
- `sum`: left + right as a raw float in 0..18 (regression, one value). Deliberately not rescaled: its MSE
  starts near 100 while a cross-entropy starts near 2.3, which is the loss-scale imbalance that loss
  weighting methods exist for;
- `parity`: 1 if the left digit is odd, else 0 (binary);
- `larger`: 1 if the left digit is larger than the right one, else 0 (binary; it needs both digits);
- `zero`: 1 if the left digit is a 0, else 0 (binary, about 10% positive: class imbalance).

Label noise: `label_noise={task: p}` replaces the label of a seeded fraction p of the samples of each split
in `label_noise_splits` (train only by default) with a different class drawn uniformly (classification) or
the other value (binary): a task whose labels mislead. `experiment=multidigits_hard` combines these into a
benchmark where tasks differ in type, loss scale, noise, labels and balance.

Partial labels: `label_fraction={task: f}` keeps the labels of a seeded fraction f of the samples of each
split in `label_fraction_splits` (train only by default) and emits `label_mask` for those tasks. The
labelled samples are drawn per task and split from the seed alone, so a task's mask does not depend on the
other tasks' fractions, and a smaller fraction labels a subset of the samples a larger one labels.
Unlabelled samples carry a placeholder target (-1 for a class, NaN for a float), so code that ignored the
mask would fail loudly instead of training on labels that are meant to be hidden.

Train, val and test draw their digits from disjoint pools of source images (a stratified split of the
1,797 originals), so test accuracy measures generalisation to digit images never seen in training.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mtlrun.data.base import SPLITS, DataModule, DataSpec, ModalityInfo, TargetInfo, TensorDictDataset
from mtlrun.data.digits_source import load_digits
from mtlrun.errors import ConfigError

DIGIT = 8  # side of a source digit
CANVAS = 16
LEFT_X = (0, 2)  # inclusive ranges of the left digit's top-left corner
LEFT_Y = (2, 6)
SHIFT_X = (3, 5)  # right digit = left corner + (dx, dy)
SHIFT_Y = (-2, 2)
TARGETS = {"left": TargetInfo("classification", num_classes=10),
           "right": TargetInfo("classification", num_classes=10),
           "sum": TargetInfo("regression", dim=1),
           "parity": TargetInfo("binary", dim=1),
           "larger": TargetInfo("binary", dim=1),
           "zero": TargetInfo("binary", dim=1)}


def _source_pools(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """Split source-image indices into disjoint train/val/test pools, stratified by class."""
    rng = np.random.default_rng(seed)
    pools: list[list[np.ndarray]] = [[], [], []]
    bounds = np.cumsum(fractions)[:2] / np.sum(fractions)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (bounds * len(idx)).round().astype(int)
        for pool, part in zip(pools, np.split(idx, cuts)):
            pool.append(part)
    return [np.sort(np.concatenate(p)) for p in pools]


def compose(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, seed: int):
    """Make `n` two-digit canvases from source images in `pool`.

    Returns (canvas float32 [n,1,16,16] in [0,1], left labels, right labels, corners [n,4] = yl,xl,yr,xr).
    """
    rng = np.random.default_rng(seed)
    left = rng.choice(pool, size=n)
    right = rng.choice(pool, size=n)
    yl = rng.integers(LEFT_Y[0], LEFT_Y[1] + 1, size=n)
    xl = rng.integers(LEFT_X[0], LEFT_X[1] + 1, size=n)
    yr = yl + rng.integers(SHIFT_Y[0], SHIFT_Y[1] + 1, size=n)
    xr = xl + rng.integers(SHIFT_X[0], SHIFT_X[1] + 1, size=n)
    # Scatter each digit's 64 pixels at once with flat indices, then combine by max: no per-sample loop.
    offs = np.arange(DIGIT)
    canvas = np.zeros((n, CANVAS * CANVAS), dtype=np.float32)
    for src, y, x in ((left, yl, xl), (right, yr, xr)):
        rows = (y[:, None] + offs)[:, :, None]
        cols = (x[:, None] + offs)[:, None, :]
        flat = (rows * CANVAS + cols).reshape(n, -1)
        layer = np.zeros_like(canvas)
        np.put_along_axis(layer, flat, images[src].reshape(n, -1), axis=1)
        np.maximum(canvas, layer, out=canvas)
    canvas = canvas.reshape(n, 1, CANVAS, CANVAS) / 16.0
    corners = np.stack([yl, xl, yr, xr], axis=1)
    return canvas, labels[left], labels[right], corners


def overlap_area(corners: np.ndarray) -> np.ndarray:
    yl, xl, yr, xr = corners.T
    h = np.clip(DIGIT - np.abs(yr - yl), 0, None)
    w = np.clip(DIGIT - np.abs(xr - xl), 0, None)
    return h * w


def digit_targets(left: np.ndarray, right: np.ndarray) -> dict[str, torch.Tensor]:
    """Every target of multidigits from the two digit labels (see the module docstring)."""
    left_t, right_t = torch.from_numpy(left).long(), torch.from_numpy(right).long()
    return {"left": left_t, "right": right_t,
            "sum": (left_t + right_t).float().unsqueeze(1),  # [N, 1], raw 0..18
            "parity": (left_t % 2).float(),  # [N]: the one-label binary layout
            "larger": (left_t > right_t).float(),
            "zero": (left_t == 0).float()}


def add_label_noise(target: torch.Tensor, rate: float, num_classes: int | None, seed: int, split: str,
                    task: str) -> torch.Tensor:
    """Exactly round(rate * n) labels replaced, chosen from (seed, split, task) only: a class by a different
    class drawn uniformly (num_classes), a binary label by the other value (num_classes None)."""
    n = len(target)
    stream = np.random.default_rng([seed, 104_729, SPLITS.index(split), zlib.crc32(task.encode())])
    picked = torch.from_numpy(stream.permutation(n)[: round(rate * n)])
    noisy = target.clone()
    if num_classes is None:
        noisy[picked] = 1.0 - noisy[picked]
    else:  # shift by 1..C-1: never the true class, every other class equally likely
        shift = torch.from_numpy(stream.integers(1, num_classes, size=len(picked)))
        noisy[picked] = (noisy[picked] + shift) % num_classes
    return noisy


def label_mask(n: int, fraction: float, seed: int, split: str, task: str) -> torch.Tensor:
    """Exactly round(fraction * n) True entries, chosen from (seed, split, task) only."""
    stream = np.random.default_rng([seed, 7_919, SPLITS.index(split), zlib.crc32(task.encode())])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(stream.permutation(n)[: round(fraction * n)])] = True
    return mask


def hide_unlabelled(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    placeholder = -1 if not target.is_floating_point() else float("nan")
    return torch.where(mask.view(-1, *[1] * (target.dim() - 1)), target, torch.full_like(target, placeholder))


class MultiDigits(DataModule):
    name = "multidigits"

    def __init__(self, n_train: int = 10000, n_val: int = 2000, n_test: int = 2000,
                 source_split: tuple[float, float, float] = (0.6, 0.15, 0.25), seed: int = 0,
                 label_fraction: Mapping[str, float] | None = None,
                 label_fraction_splits: Sequence[str] = ("train",), label_noise: Mapping[str, float] | None = None,
                 label_noise_splits: Sequence[str] = ("train",), **loader):
        super().__init__(**loader)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.source_split = tuple(source_split)
        self.seed = seed
        self.label_fraction = {str(k): v for k, v in dict(label_fraction or {}).items()}
        self.label_fraction_splits = [str(s) for s in label_fraction_splits]
        self.label_noise = {str(k): v for k, v in dict(label_noise or {}).items()}
        self.label_noise_splits = [str(s) for s in label_noise_splits]
        self._check_label_fraction()

    def _check_label_fraction(self) -> None:
        problems = []
        for task, fraction in self.label_fraction.items():
            if task not in TARGETS:
                problems.append(f"data.label_fraction.{task}: multidigits has no target '{task}'; "
                                f"available: {', '.join(TARGETS)}")
            elif isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                problems.append(f"data.label_fraction.{task}={fraction}: must be a number in [0, 1] "
                                f"(the fraction of samples that keep their label)")
        for task, rate in self.label_noise.items():
            if task not in TARGETS or TARGETS[task].kind == "regression":
                noisy = [t for t, info in TARGETS.items() if info.kind != "regression"]
                problems.append(f"data.label_noise.{task}: label noise applies to a class or binary target of "
                                f"multidigits: {', '.join(noisy)}")
            elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                problems.append(f"data.label_noise.{task}={rate}: must be a number in [0, 1] (the fraction of "
                                f"samples whose label is replaced by a wrong one)")
        for key, splits in (("label_fraction_splits", self.label_fraction_splits),
                            ("label_noise_splits", self.label_noise_splits)):
            for split in splits:
                if split not in SPLITS:
                    problems.append(f"data.{key}: '{split}' is not a split; valid: {', '.join(SPLITS)}")
        if problems:
            raise ConfigError(problems)

    @property
    def full_spec(self) -> DataSpec:
        image = ModalityInfo("image", (1, CANVAS, CANVAS), {"in_channels": 1, "input_size": (CANVAS, CANVAS)})
        return DataSpec(modalities={"image": image}, targets=dict(TARGETS))

    def _label_masks(self, split: str, n: int) -> dict[str, torch.Tensor]:
        if split not in self.label_fraction_splits:
            return {}
        return {task: label_mask(n, float(f), self.seed, split, task)
                for task, f in self.label_fraction.items() if f < 1}

    def build(self) -> dict[str, TensorDictDataset]:
        images, labels = load_digits()
        pools = _source_pools(labels, self.source_split, self.seed)
        splits = {}
        for i, (split, pool) in enumerate(zip(("train", "val", "test"), pools)):
            # a different stream per split, all derived from the one seed
            canvas, left, right, _ = compose(images, labels, pool, self.sizes[split],
                                             seed=self.seed * 1000 + 17 + i)
            targets = digit_targets(left, right)
            if split in self.label_noise_splits:
                for task, rate in self.label_noise.items():
                    if rate > 0:
                        targets[task] = add_label_noise(targets[task], float(rate), TARGETS[task].num_classes,
                                                        self.seed, split, task)
            masks = self._label_masks(split, len(canvas))
            targets.update({task: hide_unlabelled(targets[task], mask) for task, mask in masks.items()})
            splits[split] = TensorDictDataset(inputs={"image": torch.from_numpy(canvas)}, targets=targets,
                                              label_mask=masks or None)
        return splits
