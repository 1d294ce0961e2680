"""Write multidigits as a user's own data: PNG files plus a manifest table (CSV and JSON Lines).

    python examples/make_multidigits_table.py                 # -> examples/multidigits_table/
    python examples/make_multidigits_table.py --out DIR --n-train 200 --n-val 50 --n-test 50

Each row is one 16x16 image of two overlapping handwritten digits (mtlrun.data.multidigits, nothing is
downloaded) and its columns:

    image    images/00000.png           the image, grey PNG (path relative to the manifest)
    mask     masks/00000.png            segmentation: 0 background, 1 left digit, 2 right digit,
                                        255 (ignore) where both digits have ink
    split    train | val | test         disjoint source digits per split, as in data=multidigits
    left     0..9                       the left digit
    right    0..9                       the right digit; EMPTY for half of the train rows (partial labels)
    parity   odd | even                 of the left digit
    sum      0..18                      left + right
    note     e.g. "the right one looks big"   a noisy text about the right digit (>= 5 or not, wrong 15 %
                                        of the time); EMPTY for 20 % of the rows (a missing modality)
    ink      e.g. 0.2143                mean pixel value; EMPTY for 10 % of the rows
    pen      blue | black | red         a categorical distractor; EMPTY for 10 % of the rows

manifest.csv and manifest.jsonl hold the same table (the JSON Lines one with numbers as numbers and empty
cells as null), so either can be given as data.path. Everything is a pure function of --seed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtlrun.data.multidigits import DIGIT, _source_pools, compose

SMALL, BIG = ("small", "low", "little"), ("big", "high", "large")
FILLERS = ("the", "right", "one", "looks", "seems", "quite", "here")
PENS = ("blue", "black", "red")
HERE = Path(__file__).resolve().parent


def digit_layers(images: np.ndarray, pool: np.ndarray, n: int, seed: int, corners: np.ndarray) -> np.ndarray:
    """[n, 2, 16, 16] ink of the left and of the right digit alone, placed as `compose` placed them.

    `compose` draws the left then the right source indices first from its seeded generator; the same draws
    here give the same digits (checked against the composed canvas by the caller)."""
    rng = np.random.default_rng(seed)
    sources = (rng.choice(pool, size=n), rng.choice(pool, size=n))
    layers = np.zeros((n, 2, 16, 16), dtype=np.float32)
    for k, src in enumerate(sources):
        for i in range(n):
            y, x = corners[i, 2 * k], corners[i, 2 * k + 1]
            layers[i, k, y:y + DIGIT, x:x + DIGIT] = images[src[i]] / 16.0
    return layers


def make_rows(n_train: int, n_val: int, n_test: int, seed: int, out: Path) -> list[dict]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = _source_pools(digits.target, (0.6, 0.15, 0.25), seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, index = [], 0
    for s, (split, pool, n) in enumerate(zip(("train", "val", "test"), pools, (n_train, n_val, n_test))):
        stream = seed * 1000 + 17 + s
        canvas, left, right, corners = compose(digits.images, digits.target, pool, n, seed=stream)
        layers = digit_layers(digits.images, pool, n, stream, corners)
        assert np.allclose(layers.max(axis=1), canvas[:, 0]), "compose() changed how it draws its digits"
        ink = layers > 0.25
        mask = np.where(ink[:, 0], 1, 0) + np.where(ink[:, 1], 2, 0)
        mask = np.where(ink[:, 0] & ink[:, 1], 255, mask).astype(np.uint8)
        rng = np.random.default_rng([seed, 99, s])
        big = (right >= 5) ^ (rng.random(n) < 0.15)
        for i in range(n):
            name = f"{index:05d}.png"
            Image.fromarray((canvas[i, 0] * 255).round().astype(np.uint8), mode="L").save(out / "images" / name)
            Image.fromarray(mask[i], mode="L").save(out / "masks" / name)
            words = [FILLERS[j] for j in rng.integers(0, len(FILLERS), size=2)]
            words.insert(int(rng.integers(0, 3)), str(rng.choice(BIG if big[i] else SMALL)))
            rows.append({
                "image": f"images/{name}", "mask": f"masks/{name}", "split": split,
                "left": int(left[i]),
                "right": None if split == "train" and rng.random() < 0.5 else int(right[i]),
                "parity": "odd" if left[i] % 2 else "even",
                "sum": int(left[i] + right[i]),
                "note": None if rng.random() < 0.2 else " ".join(words),
                "ink": None if rng.random() < 0.1 else round(float(canvas[i].mean()), 4),
                "pen": None if rng.random() < 0.1 else str(rng.choice(PENS)),
            })
            index += 1
    return rows


def write(rows: list[dict], out: Path) -> None:
    columns = list(rows[0])
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if r[c] is None else r[c] for c in columns] for r in rows])
    with open(out / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "multidigits_table", help="output folder (created)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = make_rows(args.n_train, args.n_val, args.n_test, args.seed, args.out)
    write(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out / 'manifest.csv'} and {args.out / 'manifest.jsonl'}, "
          f"images in {args.out / 'images'}, masks in {args.out / 'masks'}")


if __name__ == "__main__":
    main()
