"""`digits_av`: a multi-modal benchmark built from scikit-learn's handwritten digits (no download).

Each sample is one source digit d (0-9) seen through four modalities, each degraded so that it carries
only part of the answer; the parts are complementary, so fusing them is what it takes to name the digit:

- image [1, 8, 8]: the digit with a random block of 5 x 5 of its 64 pixels occluded by a random grey
  level, low random contrast and Gaussian noise. Alone it identifies the digit only part of the time.
- audio [2048 samples at 8 kHz]: a synthetic voiced "utterance": harmonics of a speaker-dependent pitch
  (90-220 Hz, with vibrato) shaped by two formants that encode d mod 5 (five vowel-like formant pairs),
  scaled by a speaker-dependent vocal-tract factor, under a random amplitude envelope and white noise at
  a random SNR. It tells d from d + 5 apart not at all: d and d + 5 "sound" the same.
- text: a templated description that says whether the digit is small (0-4) or large (5-9), wrong 15% of
  the time, among filler words, with character typos. Alone it says only which half d is in.
- tabular: statistics of the clean image (ink, centroid, ink in the top and left halves, each with
  measurement noise) plus distractor numbers, and two categorical columns: a random "pen" (a distractor)
  and the quartile of the ink (informative, coarse).

So audio gives d mod 5, text gives d >= 5 (noisily), and image and tabular give noisy views of the shape:
none names the digit reliably alone; together they do. Targets: `digit` (10 classes), `parity` (d odd,
binary: needs both d mod 5 and d >= 5), `ink` (regression: the clean digit's total ink, standardised with
the training split's mean and std; the tabular ink column is a noisy measurement of it).

Train, val and test draw from disjoint pools of source images (a stratified split of the 1,797
originals), and everything is a pure function of `seed`. The text vocabulary is fitted on the training
texts and travels in the checkpoint (`state_dict`).
"""

from __future__ import annotations

import numpy as np
import torch

from mtlrun.data.base import SPLITS, DataModule, DataSpec, ModalityInfo, TargetInfo, TensorDictDataset
from mtlrun.data.digits_source import load_digits
from mtlrun.data.multidigits import _source_pools
from mtlrun.data.text import FittedVocabulary, Tokenizer

SIDE = 8
SAMPLE_RATE = 8000
NUM_SAMPLES = 2048
# (F1, F2) in Hz for d mod 5: five well separated vowel-like formant pairs
FORMANTS = np.array([(300.0, 2300.0), (450.0, 1700.0), (700.0, 1200.0), (500.0, 900.0), (320.0, 700.0)])
TARGETS = {"digit": TargetInfo("classification", num_classes=10), "parity": TargetInfo("binary", dim=1),
           "ink": TargetInfo("regression", dim=1)}
NUMERIC = ("ink", "centroid_x", "centroid_y", "top_ink", "left_ink", "noise_a", "noise_b", "noise_c")
PENS = 4
INK_QUARTILES = 4
SMALL_WORDS = ("small", "low", "little", "tiny")
LARGE_WORDS = ("large", "high", "big", "huge")
FILLERS = ("a", "the", "one", "some", "blue", "red", "thin", "bold", "quick", "neat", "odd", "shape", "mark",
           "sign", "glyph", "written", "drawn", "here", "again", "maybe")


def degrade_image(clean: np.ndarray, rng: np.random.Generator, occlusion: int, noise: float) -> np.ndarray:
    """clean [n, 8, 8] in [0, 1] -> occluded, low-contrast, noisy [n, 1, 8, 8] float32."""
    n = len(clean)
    img = clean * rng.uniform(0.5, 1.0, size=(n, 1, 1))
    y0 = rng.integers(0, SIDE - occlusion + 1, size=n)
    x0 = rng.integers(0, SIDE - occlusion + 1, size=n)
    rows, cols = np.arange(SIDE)[None, :, None], np.arange(SIDE)[None, None, :]
    block = ((rows >= y0[:, None, None]) & (rows < (y0 + occlusion)[:, None, None])
             & (cols >= x0[:, None, None]) & (cols < (x0 + occlusion)[:, None, None]))
    img = np.where(block, rng.uniform(0.0, 1.0, size=(n, 1, 1)), img)
    img = img + rng.normal(0.0, noise, size=img.shape)
    return img[:, None].astype(np.float32)


def synthesize_audio(digits: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """[n] digits -> [n, NUM_SAMPLES] float32 waveforms whose formants encode digit mod 5.

    Only the harmonics within a few bandwidths of a formant are synthesised (the others would get a gain
    under 1e-3), which keeps this to ~14 sinusoids per sample; the sines run in torch, in float32.
    """
    n = len(digits)
    t = torch.arange(NUM_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    f0 = torch.from_numpy(rng.uniform(90.0, 220.0, size=n))
    rate = torch.from_numpy(rng.uniform(4.0, 7.0, size=(n, 1)))
    vibrato = 1.0 + 0.02 * torch.sin(2 * np.pi * rate * t + torch.from_numpy(rng.uniform(0, 2 * np.pi, (n, 1))))
    phase = (2 * np.pi * torch.cumsum(f0[:, None] * vibrato, dim=1) / SAMPLE_RATE).float()  # [n, T]
    formants = torch.from_numpy(FORMANTS[digits % 5] * rng.uniform(0.88, 1.12, size=(n, 1)))  # vocal tract
    bandwidth = 90.0
    wave = torch.zeros(n, NUM_SAMPLES)
    offsets = rng.uniform(0, 2 * np.pi, size=(2, 7, n))
    for j in range(2):
        nearest = torch.round(formants[:, j] / f0)
        for o in range(-3, 4):
            k = (nearest + o).clamp_min(1)  # [n] harmonic number
            freq = k * f0
            gain = torch.exp(-0.5 * ((freq[:, None] - formants) / bandwidth) ** 2).sum(1) / 2  # both formants
            gain = torch.where(freq < SAMPLE_RATE / 2, gain, 0.0).float()
            wave += gain[:, None] * torch.sin(k.float()[:, None] * phase
                                              + torch.from_numpy(offsets[j, o + 3]).float()[:, None])
    t = t.float()
    centre = torch.from_numpy(rng.uniform(0.3, 0.7, size=(n, 1))).float() * t[-1]
    width = torch.from_numpy(rng.uniform(0.05, 0.12, size=(n, 1))).float()
    wave *= torch.exp(-0.5 * ((t - centre) / width) ** 2)  # one syllable
    wave /= wave.pow(2).mean(1, keepdim=True).sqrt() + 1e-8
    snr = torch.from_numpy(rng.uniform(*snr_db, size=(n, 1))).float()
    wave += torch.from_numpy(rng.standard_normal(size=(n, NUM_SAMPLES), dtype=np.float32)) * 10 ** (-snr / 20)
    return (wave / wave.abs().amax(1, keepdim=True)).numpy()


def describe(digits: np.ndarray, rng: np.random.Generator, flip: float, typo: float) -> list[str]:
    """A short noisy text per digit that says (wrongly with probability `flip`) whether it is >= 5."""
    n = len(digits)
    large = (digits >= 5) ^ (rng.random(n) < flip)
    size_words = np.where(large[:, None], np.array(LARGE_WORDS)[None], np.array(SMALL_WORDS)[None])
    size_word = size_words[np.arange(n), rng.integers(0, 4, size=n)]
    fill = np.array(FILLERS)[rng.integers(0, len(FILLERS), size=(n, 4))]
    order = rng.integers(0, 3, size=n)
    texts = []
    for i in range(n):  # string formatting per text: tens of microseconds each, only at data build time
        words = [fill[i, 0], fill[i, 1], fill[i, 2], fill[i, 3]]
        words.insert(int(order[i]) + 1, f"{size_word[i]} number")
        texts.append(_typos(" ".join(words), rng, typo))
    return texts


def _typos(text: str, rng: np.random.Generator, rate: float) -> str:
    chars = list(text)
    out, i = [], 0
    draws = rng.random((len(chars), 2))
    while i < len(chars):
        if draws[i, 0] < rate / 2:  # drop
            i += 1
            continue
        if draws[i, 0] < rate and i + 1 < len(chars):  # swap with the next
            out += [chars[i + 1], chars[i]]
            i += 2
            continue
        out.append(chars[i])
        i += 1
    return "".join(out)


def image_statistics(clean: np.ndarray) -> np.ndarray:
    """[n, 8, 8] -> [n, 5]: ink, centroid x, centroid y, ink fraction in the top half and the left half."""
    ink = clean.sum((1, 2))
    safe = np.maximum(ink, 1e-6)
    coords = np.arange(SIDE) / (SIDE - 1)
    cx = (clean.sum(1) * coords).sum(1) / safe
    cy = (clean.sum(2) * coords).sum(1) / safe
    top = clean[:, : SIDE // 2].sum((1, 2)) / safe
    left = clean[:, :, : SIDE // 2].sum((1, 2)) / safe
    return np.stack([ink, cx, cy, top, left], axis=1)


class DigitsAV(FittedVocabulary, DataModule):
    name = "digits_av"

    def __init__(self, n_train: int = 6000, n_val: int = 1000, n_test: int = 2000,
                 source_split: tuple[float, float, float] = (0.6, 0.15, 0.25), seed: int = 0,
                 occlusion: int = 5, image_noise: float = 0.3, snr_db: tuple[float, float] = (-6.0, 6.0),
                 text_flip: float = 0.15, typo_rate: float = 0.05, stat_noise: float = 0.5,
                 text_level: str = "char", max_len: int = 48, **loader):
        super().__init__(**loader)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.source_split = tuple(source_split)
        self.seed = seed
        self.occlusion, self.image_noise, self.snr_db = int(occlusion), float(image_noise), tuple(snr_db)
        self.text_flip, self.typo_rate, self.stat_noise = float(text_flip), float(typo_rate), float(stat_noise)
        self.tokenizer = Tokenizer(level=text_level, max_len=max_len)
        self._raw: dict | None = None

    def _load(self) -> None:  # FittedVocabulary: the vocabulary is fitted as the splits are generated
        self._generate()

    @property
    def full_spec(self) -> DataSpec:
        self._generate()
        return DataSpec(modalities={
            "image": ModalityInfo("image", (1, SIDE, SIDE), {"in_channels": 1, "input_size": (SIDE, SIDE)}),
            "audio": ModalityInfo("audio", (NUM_SAMPLES,), {"sample_rate": SAMPLE_RATE}),
            "text": ModalityInfo("text", (self.tokenizer.max_len,),
                                 {"vocab_size": self.tokenizer.vocab_size, "max_len": self.tokenizer.max_len}),
            "tabular": ModalityInfo("tabular", (len(NUMERIC) + 2,),
                                    {"num_numeric": len(NUMERIC), "cardinalities": [PENS, INK_QUARTILES]}),
        }, targets=dict(TARGETS))

    def _generate(self) -> dict:
        """Every split's raw arrays and texts; computed once. Fits the tokenizer unless it was loaded."""
        if self._raw is not None:
            return self._raw
        digit_images, labels = load_digits()
        images = digit_images / 16.0
        pools = _source_pools(labels, self.source_split, self.seed)
        raw = {}
        for i, (split, pool) in enumerate(zip(SPLITS, pools)):
            rng = np.random.default_rng([self.seed, 4_242, i])
            idx = rng.choice(pool, size=self.sizes[split])
            digits, clean = labels[idx], images[idx]
            stats = image_statistics(clean)
            raw[split] = {"digits": digits, "clean_ink": stats[:, 0],
                          "image": degrade_image(clean, rng, self.occlusion, self.image_noise),
                          "audio": synthesize_audio(digits, rng, self.snr_db),
                          "text": describe(digits, rng, self.text_flip, self.typo_rate),
                          "stats": stats, "pen": rng.integers(1, PENS + 1, size=len(idx)),
                          "distractors": rng.normal(size=(len(idx), 3))}
        # standardise numeric columns and the ink target with the training split's statistics
        train_stats = raw["train"]["stats"]
        mean, std = train_stats.mean(0), train_stats.std(0) + 1e-8
        extra = len(NUMERIC) - len(mean)  # the distractor columns are drawn standardised
        self.numeric_mean = np.concatenate([mean, np.zeros(extra)])
        self.numeric_std = np.concatenate([std, np.ones(extra)])
        ink_cuts = np.quantile(raw["train"]["clean_ink"], [0.25, 0.5, 0.75])
        for split in SPLITS:
            r = raw[split]
            rng = np.random.default_rng([self.seed, 4_243, SPLITS.index(split)])
            measured = (r["stats"] - mean) / std + rng.normal(0.0, self.stat_noise, size=r["stats"].shape)
            r["tabular"] = np.concatenate([measured, r["distractors"], r["pen"][:, None],
                                           np.digitize(r["clean_ink"], ink_cuts)[:, None] + 1], axis=1)
            r["ink"] = (r["clean_ink"] - mean[0]) / std[0]
        self.fit_vocabulary(raw["train"]["text"])
        self._raw = raw
        return raw

    def raw_splits(self) -> dict[str, dict]:
        """Per split, the arrays before tokenising: digits, clean_ink, image [N, 1, 8, 8], audio [N, 2048],
        text (list of str), tabular [N, 10] (numeric standardised with `numeric_mean` / `numeric_std`,
        then pen and ink quartile codes from 1), pen, ink (the standardised target), ...; written to files
        by examples/make_digits_av_table.py."""
        return self._generate()

    def build(self) -> dict[str, TensorDictDataset]:
        raw = self._generate()
        splits = {}
        for split in SPLITS:
            r = raw[split]
            digits = torch.from_numpy(r["digits"]).long()
            splits[split] = TensorDictDataset(
                inputs={"image": torch.from_numpy(r["image"]), "audio": torch.from_numpy(r["audio"]),
                        "text": self.tokenizer.encode(r["text"]),
                        "tabular": torch.from_numpy(r["tabular"]).float()},
                targets={"digit": digits, "parity": (digits % 2).float(),
                         "ink": torch.from_numpy(r["ink"]).float().unsqueeze(1)})
        return splits
