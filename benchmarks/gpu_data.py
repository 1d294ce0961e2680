"""Stand-ins for the built-in data sets that live on disk (CIFAR-10, CelebA, NYUv2, a manifest table), written
in their official layouts with random content, so benchmarks/gpu_check.py can build every data set through
mtlrun's own data modules without a download. Pass real folders to gpu_check.py to use the real data instead.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young"]


def write_cifar(root: Path, per_file: int) -> Path:
    """<root>/cifar-10-batches-py with `per_file` random images in each of the six batch files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_file) + i) % 10]
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": labels, b"data": data}, f)
    return root


def write_celeba(root: Path, n: int) -> Path:
    """<root>/celeba with `n` 178x218 JPEGs (80 % train, 10 % val, 10 % test) and random attributes."""
    from PIL import Image

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)).save(
            folder / "img_align_celeba" / name)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES)))
              for name in names]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [0 if i < 0.8 * n else 1 if i < 0.9 * n else 2 for i in range(n)]
    (folder / "list_eval_partition.txt").write_text("".join(f"{a} {p}\n" for a, p in zip(names, partition)))
    return root


def write_nyuv2(root: Path, n_train: int, n_test: int, size=(48, 64)) -> Path:
    """<root>/{train,val}/{image,label,depth,normal}/<i>.npy, MTAN's preprocessed layout."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, n in (("train", n_train), ("val", n_test)):
        for i in range(n):
            depth = (rng.random((h, w, 1)) * 5 + 0.5).astype(np.float32)
            normal = rng.standard_normal((h, w, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            arrays = {"image": rng.random((h, w, 3)).astype(np.float32),
                      "label": rng.integers(-1, 13, size=(h, w)).astype(np.float32), "depth": depth, "normal": normal}
            for name, array in arrays.items():
                (root / split / name).mkdir(parents=True, exist_ok=True)
                np.save(root / split / name / f"{i}.npy", array)
    return root


def write_table(root: Path, n_train: int) -> Path:
    """examples/make_multidigits_table.py's PNG + text + tabular manifest; returns the manifest's path."""
    spec = importlib.util.spec_from_file_location("make_table", REPO / "examples" / "make_multidigits_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(root), "--n-train", str(n_train), "--n-val", "32", "--n-test", "32"])
    return root / "manifest.csv"
