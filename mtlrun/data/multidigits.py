"""`multidigits`: a MultiMNIST-style benchmark made from scikit-learn's real handwritten digits.

Two 8x8 digits (scikit-learn's `load_digits`, shipped with the package: nothing is downloaded) are
overlaid on a 16x16 canvas: the left one jittered near the left edge, the right one shifted 3-5 pixels to
its right and up to 2 pixels up or down, so their boxes always overlap by at least a quarter of a digit's
area (at least 18 of 64 pixels). Pixels are combined with max, as in MultiMNIST. Tasks: `left` and
`right`, the class of each digit.

Train, val and test draw their digits from disjoint pools of source images (a stratified split of the
1,797 originals), so test accuracy measures generalisation to digit images never seen in training.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlrun.data.base import DataModule, DataSpec, TargetInfo, TensorDictDataset

DIGIT = 8  # side of a source digit
CANVAS = 16
LEFT_X = (0, 2)  # inclusive ranges of the left digit's top-left corner
LEFT_Y = (2, 6)
SHIFT_X = (3, 5)  # right digit = left corner + (dx, dy)
SHIFT_Y = (-2, 2)
MIN_OVERLAP = DIGIT * DIGIT // 4


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


class MultiDigits(DataModule):
    name = "multidigits"

    def __init__(self, n_train: int = 10000, n_val: int = 2000, n_test: int = 2000,
                 source_split: tuple[float, float, float] = (0.6, 0.15, 0.25), seed: int = 0, **loader):
        super().__init__(**loader)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.source_split = tuple(source_split)
        self.seed = seed

    @property
    def spec(self) -> DataSpec:
        return DataSpec(modalities={"image": (1, CANVAS, CANVAS)},
                        targets={"left": TargetInfo("classification", num_classes=10),
                                 "right": TargetInfo("classification", num_classes=10)})

    def build(self) -> dict[str, TensorDictDataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pools = _source_pools(digits.target, self.source_split, self.seed)
        splits = {}
        for i, (split, pool) in enumerate(zip(("train", "val", "test"), pools)):
            # a different stream per split, all derived from the one seed
            canvas, left, right, _ = compose(digits.images, digits.target, pool, self.sizes[split],
                                             seed=self.seed * 1000 + 17 + i)
            splits[split] = TensorDictDataset(
                inputs={"image": torch.from_numpy(canvas)},
                targets={"left": torch.from_numpy(left).long(), "right": torch.from_numpy(right).long()})
        return splits
