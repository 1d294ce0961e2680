"""Write digits_av as a user's own multi-modal data: PNG images, WAV clips and a manifest table (CSV).

    python examples/make_digits_av_table.py                  # -> examples/digits_av_table/
    python examples/make_digits_av_table.py --out DIR --n-train 300 --n-val 50 --n-test 100

The samples are exactly those of `data=digits_av` with the same sizes and seed (mtlrun/data/digits_av.py:
one source digit seen through four degraded, complementary modalities; nothing is downloaded), written
the way real data arrives, one row per sample:

    image       images/00000.png    the degraded 8x8 digit, grey PNG (values mapped from [-1.5, 2] to 0..255)
    audio       audio/00000.wav     the 2048-sample clip, 16-bit PCM at 8 kHz
    text        e.g. "maybe large number odd"   the noisy description (small/large, 15 % wrong, typos)
    ink ... noise_c                 the eight numeric columns of the tabular modality, unstandardised
    pen         blue | black | red | green    a categorical distractor
    ink_band    q1 .. q4            the quartile of the ink (coarse, informative)
    split       train | val | test
    digit       0..9                target (classification)
    parity      odd | even          target (binary)
    ink_total   e.g. 17.5625        target (regression): the clean digit's total ink (pixel sum)

`mtlrun train --config-dir examples/configs experiment=digits_av_table` then trains on the files what
`mtlrun train experiment=digits_av` trains on the built-in tensors. Everything is a pure function of --seed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from mtlrun.data.base import SPLITS
from mtlrun.data.digits_av import NUMERIC, SAMPLE_RATE, DigitsAV
from mtlrun.data.media import write_wav

HERE = Path(__file__).resolve().parent
PEN_NAMES = ("blue", "black", "red", "green")
IMAGE_RANGE = (-1.5, 2.0)  # the degraded images' values (noise included) fall inside it


def write_png(image: np.ndarray, path: Path) -> None:
    lo, hi = IMAGE_RANGE
    grey = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    Image.fromarray((grey * 255).round().astype(np.uint8), mode="L").save(path)


def make_rows(n_train: int, n_val: int, n_test: int, seed: int, out: Path) -> list[dict]:
    data = DigitsAV(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    raw = data.raw_splits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows, index = [], 0
    for split in SPLITS:
        r = raw[split]
        # the numeric columns as an instrument would report them: the noisy standardised values mapped back
        numeric = r["tabular"][:, :len(NUMERIC)] * data.numeric_std + data.numeric_mean
        ink_band = r["tabular"][:, len(NUMERIC) + 1].astype(int)
        for i in range(len(r["digits"])):
            name = f"{index:05d}"
            write_png(r["image"][i, 0], out / "images" / f"{name}.png")
            write_wav(out / "audio" / f"{name}.wav", r["audio"][i], SAMPLE_RATE)
            digit = int(r["digits"][i])
            rows.append({"image": f"images/{name}.png", "audio": f"audio/{name}.wav", "text": r["text"][i],
                         **{col: round(float(v), 5) for col, v in zip(NUMERIC, numeric[i])},
                         "pen": PEN_NAMES[int(r["pen"][i]) - 1], "ink_band": f"q{ink_band[i]}", "split": split,
                         "digit": digit, "parity": "odd" if digit % 2 else "even",
                         "ink_total": round(float(r["clean_ink"][i]), 5)})
            index += 1
    return rows


def write(rows: list[dict], out: Path) -> None:
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "digits_av_table", help="output folder (created)")
    p.add_argument("--n-train", type=int, default=6000, help="default: data=digits_av's size")
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="data=digits_av's data.seed")
    args = p.parse_args(argv)
    rows = make_rows(args.n_train, args.n_val, args.n_test, args.seed, args.out)
    write(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out / 'manifest.csv'}, images in {args.out / 'images'}, "
          f"audio in {args.out / 'audio'}")


if __name__ == "__main__":
    main()
