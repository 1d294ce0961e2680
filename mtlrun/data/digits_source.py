"""The real handwritten digits scikit-learn ships (1,797 8x8 images, 0-16 grey levels), read without importing it.

`sklearn.datasets.load_digits` costs about 2 s of imports (scikit-learn, SciPy) in every process that builds
multidigits or digits_av, the default data: more than a tiny training run. The digits are one CSV in the
installed package (datasets/data/digits.csv.gz: 64 pixel columns, then the label), which this reads directly,
once per process. Should a scikit-learn release move the file, load_digits is used instead: same arrays, slower.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images: float64 (1797, 8, 8), labels: int64 (1797,)), both read-only (shared by every caller)."""
    path = _bundled_csv()
    if path is not None:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits as sklearn_load_digits

        bunch = sklearn_load_digits()
        images, labels = bunch.images, bunch.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _bundled_csv() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None
