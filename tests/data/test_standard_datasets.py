"""data=cifar10 and data=celeba on tiny fake copies written in the real on-disk formats (nothing downloads).

CIFAR-10: pickled batch dicts (b"data" uint8 [N, 3072], b"labels") under cifar-10-batches-py/.
CelebA: real JPEG files plus list_attr_celeba.txt / list_eval_partition.txt in the official text layout.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts import compose_config, read_results, run_cli
from mtlrun.build import build_components
from mtlrun.data import celeba as celeba_mod
from mtlrun.data import cifar10 as cifar_mod
from mtlrun.data.celeba import ATTRIBUTES, CelebA, load_image
from mtlrun.data.cifar10 import CIFAR10, random_crop_flip, stratified_split
from mtlrun.data.loading import train_loader
from mtlrun.errors import ConfigError, UsageError

PER_BATCH = 20  # images per fake CIFAR batch file: 100 train, 20 test


# ---------------------------------------------------------------- fake CIFAR-10


def write_cifar(root: Path) -> dict:
    """The official layout with PER_BATCH images per file; returns the raw arrays for comparison."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(123)
    raw = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(PER_BATCH) + i) % 10]  # every class twice per file
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{name}_{j}.png".encode() for j in range(PER_BATCH)]}, f)
        raw[name] = (data.reshape(-1, 3, 32, 32), np.array(labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in cifar_mod.CLASSES], b"num_cases_per_batch": PER_BATCH,
                     b"num_vis": 3072}, f)
    train = [raw[f"data_batch_{k}"] for k in range(1, 6)]
    return {"train_images": np.concatenate([t[0] for t in train]),
            "train_labels": np.concatenate([t[1] for t in train]), "test_images": raw["test_batch"][0],
            "test_labels": raw["test_batch"][1]}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar(root)


def normalised(images_u8: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images_u8).float() / 255
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def test_cifar_splits_shapes_labels_and_vehicle(cifar_root):
    root, raw = cifar_root
    dm = CIFAR10(root=str(root), val_size=20, batch_size=8)
    spec = dm.spec
    assert spec.modalities["image"].shape == (3, 32, 32)
    assert spec.modalities["image"].args == {"in_channels": 3, "input_size": (32, 32)}
    assert spec.targets["class"].kind == "classification" and spec.targets["class"].num_classes == 10
    assert spec.targets["vehicle"].kind == "binary" and spec.targets["vehicle"].dim == 1
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [80, 20, 20]

    test = dm.dataset("test")
    assert test.images.dtype == torch.uint8  # stored small, converted per batch
    batch = test.__getitems__(list(range(20)))
    image = batch["inputs"]["image"]
    assert image.dtype == torch.float32 and image.shape == (20, 3, 32, 32)
    torch.testing.assert_close(image, normalised(raw["test_images"], cifar_mod.MEAN, cifar_mod.STD))
    assert batch["targets"]["class"].dtype == torch.long
    assert batch["targets"]["class"].tolist() == raw["test_labels"].tolist()
    vehicle = batch["targets"]["vehicle"]
    assert vehicle.dtype == torch.float32 and vehicle.shape == (20,)
    names = [cifar_mod.CLASSES[c] for c in raw["test_labels"]]
    assert vehicle.tolist() == [float(n in ("airplane", "automobile", "ship", "truck")) for n in names]

    one = test[3]  # __getitem__ agrees with the batched path
    torch.testing.assert_close(one["inputs"]["image"], image[3])
    assert one["targets"]["class"] == batch["targets"]["class"][3]

    # the whole normalised train split is roughly centred (random uniform pixels: mean 127.5 / 255)
    train = dm.dataset("train").__getitems__(list(range(80)))["inputs"]["image"]
    expected = (0.5 - torch.tensor(cifar_mod.MEAN)) / torch.tensor(cifar_mod.STD)
    torch.testing.assert_close(train.mean(dim=(0, 2, 3)), expected, atol=0.05, rtol=0)


def test_cifar_val_split_is_stratified_seeded_and_disjoint(cifar_root):
    root, raw = cifar_root
    labels = raw["train_labels"]
    train_idx, val_idx = stratified_split(labels, 20, seed=0)
    assert len(val_idx) == 20 and len(train_idx) == 80
    assert set(train_idx).isdisjoint(val_idx) and set(train_idx) | set(val_idx) == set(range(100))
    assert np.bincount(labels[val_idx], minlength=10).tolist() == [2] * 10
    again = stratified_split(labels, 20, seed=0)
    assert np.array_equal(again[1], val_idx)
    assert not np.array_equal(stratified_split(labels, 20, seed=1)[1], val_idx)
    # uneven classes and a size that does not divide: exact total, each class within one of its share
    uneven = np.repeat(np.arange(3), [50, 30, 20])
    _, v = stratified_split(uneven, 7, seed=0)
    assert len(v) == 7 and np.all(np.abs(np.bincount(uneven[v]) - np.array([3.5, 2.1, 1.4])) < 1)

    dm = CIFAR10(root=str(root), val_size=20, seed=0)
    val = dm.dataset("val").__getitems__(list(range(20)))
    torch.testing.assert_close(val["inputs"]["image"],
                               normalised(raw["train_images"][val_idx], cifar_mod.MEAN, cifar_mod.STD))
    assert val["targets"]["class"].tolist() == labels[val_idx].tolist()
    assert len(CIFAR10(root=str(root), val_size=20, limit=7).dataset("train")) == 7


def _is_crop_or_flip(out: torch.Tensor, original: torch.Tensor) -> bool:
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            if torch.equal(out, crop) or torch.equal(out, crop.flip(-1)):
                return True
    return False


def test_cifar_augment_changes_train_batches_only_and_is_seeded(cifar_root):
    root, _ = cifar_root
    plain = CIFAR10(root=str(root), val_size=20, augment=False)
    aug = CIFAR10(root=str(root), val_size=20, augment=True)
    idx = list(range(16))

    torch.manual_seed(0)
    first = aug.dataset("train").__getitems__(idx)["inputs"]["image"]
    torch.manual_seed(0)
    second = aug.dataset("train").__getitems__(idx)["inputs"]["image"]
    third = aug.dataset("train").__getitems__(idx)["inputs"]["image"]
    reference = plain.dataset("train").__getitems__(idx)["inputs"]["image"]
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # deterministic under torch.manual_seed
    assert not torch.equal(second, third)  # and a fresh draw per batch
    assert not torch.equal(first, reference)
    for split in ("val", "test"):  # evaluation splits are never augmented
        torch.testing.assert_close(aug.dataset(split).__getitems__(idx)["inputs"]["image"],
                                   plain.dataset(split).__getitems__(idx)["inputs"]["image"], rtol=0, atol=0)

    images = plain.dataset("train").images[:16]
    torch.manual_seed(1)
    out = random_crop_flip(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert all(_is_crop_or_flip(out[i], images[i]) for i in range(16))
    flips = [not torch.equal(out[i], images[i]) for i in range(16)]
    assert sum(flips) > 8  # almost never the identity crop without a flip


def test_cifar_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(UsageError) as info:
        CIFAR10(root=str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert str((tmp_path / "nowhere" / "cifar-10-batches-py").resolve()) in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "data.download=true" in msg

    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UsageError, match="data_batch_3") as info:
        CIFAR10(root=str(tmp_path))
    assert "data_batch_1" not in str(info.value)


def test_cifar_bad_options_are_listed_together(cifar_root):
    root, _ = cifar_root
    with pytest.raises(ConfigError) as info:
        CIFAR10(root=str(root), val_size=0, limit=-1, augment="yes")
    assert [p.split("=")[0] for p in info.value.problems] == ["data.val_size", "data.augment", "data.limit"]
    with pytest.raises(UsageError, match=r"data.val_size=100: must be smaller than the 100 training images"):
        CIFAR10(root=str(root), val_size=100).dataset("train")


def test_cifar_download_only_when_asked(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    dm = CIFAR10(root=str(tmp_path / "dl"), download=True, val_size=10)
    assert calls == []  # nothing happens before the splits are needed
    assert len(dm.dataset("train")) == 90 and calls == [(str(tmp_path / "dl"), True)]
    CIFAR10(root=str(tmp_path / "dl"), download=True, val_size=10).dataset("train")
    assert len(calls) == 1  # files present: no second download

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(UsageError, match="network is unreachable") as info:
        CIFAR10(root=str(tmp_path / "off"), download=True).dataset("train")
    assert "cifar-10-python.tar.gz" in str(info.value)


# ---------------------------------------------------------------- fake CelebA

N_CELEBA = 12
PARTITION = [0] * 8 + [1] * 2 + [2] * 2


def celeba_values(i: int) -> list[int]:
    return [1 if (i + j) % 3 == 0 else -1 for j in range(len(ATTRIBUTES))]


def write_celeba(root: Path) -> Path:
    """12 real 178x218 JPEGs (grey centre square, red bands above and below) and the official text files."""
    from PIL import Image

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(N_CELEBA)]
    for i, name in enumerate(names):
        image = torch.full((3, 218, 178), 40 + 15 * i, dtype=torch.uint8)
        image[:, :20] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
        image[:, 198:] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "img_align_celeba" / name, quality=95)
    lines = [str(N_CELEBA), " ".join(ATTRIBUTES) + " "]  # the official header ends with a space
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in celeba_values(i)) for i, name in enumerate(names)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, PARTITION)))
    return folder


@pytest.fixture
def celeba_root(tmp_path):
    write_celeba(tmp_path)
    return tmp_path


def test_celeba_splits_targets_and_images(celeba_root):
    dm = CelebA(root=str(celeba_root), image_size=32, batch_size=4)
    spec = dm.spec
    assert list(spec.targets) == list(ATTRIBUTES) and len(spec.targets) == 40
    assert all(t.kind == "binary" and t.dim == 1 for t in spec.targets.values())
    assert spec.modalities["image"].shape == (3, 32, 32)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [8, 2, 2]

    val = dm.dataset("val").__getitems__([0, 1])
    image = val["inputs"]["image"]
    assert image.dtype == torch.float32 and image.shape == (2, 3, 32, 32)
    for j, i in enumerate((8, 9)):  # the val rows are images 9 and 10 (partition 1)
        assert [val["targets"][a][j].item() for a in ATTRIBUTES] == [float(v == 1) for v in celeba_values(i)]
        # the centre 178x178 square only: the grey survives the resize, the red bands (3 rows each at 32x32
        # had the whole frame been resized) are gone; the outermost rows keep some JPEG ringing of the edge
        raw = load_image(str(celeba_root / "celeba" / "img_align_celeba" / f"{i + 1:06d}.jpg"), 32)
        assert raw.shape == (3, 32, 32) and raw.dtype == torch.uint8
        assert (raw[:, 1:-1].int() - (40 + 15 * i)).abs().max() <= 4
        torch.testing.assert_close(image[j], normalised(raw.numpy(), celeba_mod.MEAN, celeba_mod.STD))
    assert val["targets"]["Smiling"].dtype == torch.float32 and val["targets"]["Smiling"].shape == (2,)
    one = dm.dataset("val")[1]
    torch.testing.assert_close(one["inputs"]["image"], image[1])


def test_celeba_attribute_selection_and_errors(celeba_root):
    dm = CelebA(root=str(celeba_root), attributes=["Smiling", "Male"], image_size=16)
    assert list(dm.spec.targets) == ["Smiling", "Male"]
    assert set(dm.dataset("train").__getitems__([0])["targets"]) == {"Smiling", "Male"}
    assert list(CelebA(root=str(celeba_root), attributes="Young").spec.targets) == ["Young"]
    with pytest.raises(ConfigError) as info:
        CelebA(root=str(celeba_root), attributes=["Smiling", "smiling", "Beard"], image_size=4, cache="no")
    msg = str(info.value)
    assert "unknown attribute(s) smiling, Beard" in msg and "Wearing_Hat" in msg and "5_o_Clock_Shadow" in msg
    assert "data.image_size=4" in msg and "data.cache=no" in msg


def test_celeba_cache_and_workers_give_the_same_batches(celeba_root):
    files = CelebA(root=str(celeba_root), image_size=24, attributes=["Smiling"])
    cached = CelebA(root=str(celeba_root), image_size=24, attributes=["Smiling"], cache=True)
    workers = CelebA(root=str(celeba_root), image_size=24, attributes=["Smiling"], num_workers=2)
    assert cached.dataset("train").images.dtype == torch.uint8
    batches = []
    for dm in (files, cached, workers):
        loader = train_loader(dm.dataset("train"), batch_size=4, seed=0, epoch=0, num_workers=dm.num_workers)
        batches.append(list(loader))
    for other in batches[1:]:
        assert len(other) == len(batches[0]) == 2
        for a, b in zip(batches[0], other):
            torch.testing.assert_close(a["inputs"]["image"], b["inputs"]["image"], rtol=0, atol=0)
            assert torch.equal(a["targets"]["Smiling"], b["targets"]["Smiling"])


def test_celeba_corrupt_attribute_row_names_file_and_line(celeba_root):
    path = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # line 5 (the third image) loses its last value
    lines[6] = lines[6].replace("-1", " 0", 1)  # line 7: a value that is neither -1 nor 1
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError) as info:
        CelebA(root=str(celeba_root)).dataset("train")
    msg = str(info.value)
    assert str(path) in msg and "2 problem(s)" in msg
    assert "line 5: '000003.jpg' has 39 values, expected 40" in msg
    assert "line 7: '000005.jpg' has '0' for" in msg


def test_celeba_missing_image_and_partition_entries(celeba_root):
    (celeba_root / "celeba" / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(UsageError) as info:
        CelebA(root=str(celeba_root)).dataset("test")
    msg = str(info.value)
    assert "000004.jpg (list_attr_celeba.txt line 6)" in msg and "1 image(s)" in msg
    assert CelebA(root=str(celeba_root), limit=3).dataset("train") is not None  # only the kept ones are needed

    part = celeba_root / "celeba" / "list_eval_partition.txt"
    part.write_text("".join(line + "\n" for line in part.read_text().splitlines() if not line.startswith("000002")))
    with pytest.raises(UsageError, match=r"has no line for '000002.jpg' \(list_attr_celeba.txt line 4\)"):
        CelebA(root=str(celeba_root)).dataset("train")


def test_celeba_missing_files_and_download(tmp_path, monkeypatch):
    with pytest.raises(UsageError) as info:
        CelebA(root=str(tmp_path))
    msg = str(info.value)
    folder = (tmp_path / "celeba").resolve()
    for missing in ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba/"):
        assert f"{folder}/{missing}" in msg
    assert "drive.google.com" in msg and "data.download=true" in msg and "quota" in msg and "unzip" in msg

    import torchvision

    class QuotaExceeded:
        def __init__(self, *a, **k):
            raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets, "CelebA", QuotaExceeded)
    dm = CelebA(root=str(tmp_path), download=True)  # no check, no download until the splits are needed
    with pytest.raises(UsageError) as info:
        dm.dataset("train")
    msg = str(info.value)
    assert "Too many users" in msg and "img_align_celeba.zip" in msg and "gdown" in msg


def _build_and_step(overrides: list[str]):
    """What test_configs does for every shipped option: compose, build, one batch through the model."""
    parts = build_components(compose_config([*overrides, "trainer.device=cpu"]))
    spec = parts.data.spec
    assert set(parts.tasks) <= set(spec.targets)
    batch = next(iter(train_loader(parts.data.dataset("train"), batch_size=4, seed=0, epoch=0)))
    assert batch["inputs"]["image"].shape == (4, *spec.shape("image"))
    preds = parts.model(batch["inputs"])
    losses = {t: task.loss(preds[t], batch["targets"][t], None) for t, task in parts.tasks.items()}
    assert all(torch.isfinite(v) for v in losses.values())
    return parts


def test_cifar10_preset_fits_the_data(cifar_root):
    root, _ = cifar_root
    parts = _build_and_step(["data=cifar10", f"data.root={root}", "data.val_size=20", "tasks=cifar10"])
    assert set(parts.tasks) == {"class", "vehicle"}


def test_celeba_task_presets_fit_the_data(celeba_root):
    nine = {"5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee", "Mustache", "No_Beard",
            "Rosy_Cheeks", "Wearing_Hat"}
    base = ["data=celeba", f"data.root={celeba_root}", "data.image_size=16", "data.num_workers=0"]
    assert set(_build_and_step([*base, "tasks=celeba"]).tasks) == nine
    assert list(_build_and_step([*base, "tasks=celeba_all"]).tasks) == list(ATTRIBUTES)


# ---------------------------------------------------------------- end to end


def _cli(*args, cwd):
    return run_cli("train", *args, "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.device=cpu",
                   "scheduler.warmup_steps=0", cwd=cwd)


@pytest.mark.e2e
def test_train_cli_on_fake_cifar10(tmp_path):
    write_cifar(tmp_path / "data")
    proc = _cli("data=cifar10", "data.root=data", "data.val_size=20", "data.batch_size=16", "data.augment=true",
                "tasks=cifar10", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_results(tmp_path / "run")
    for key in ("test/class/accuracy", "test/class/macro_f1", "test/vehicle/accuracy", "test/vehicle/f1"):
        assert key in metrics and 0 <= metrics[key] <= 1, key


@pytest.mark.e2e
def test_train_cli_on_fake_celeba_and_missing_data_exit_code(tmp_path):
    write_celeba(tmp_path / "data")
    proc = _cli("data=celeba", "data.root=data", "data.image_size=16", "data.batch_size=4", "data.num_workers=0",
                "tasks=celeba", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_results(tmp_path / "run")
    assert {"test/Smiling/accuracy"}.isdisjoint(metrics) and "test/Wearing_Hat/f1" in metrics
    assert "test/5_o_Clock_Shadow/accuracy" in metrics

    proc = _cli("data=cifar10", "data.root=nowhere", "tasks=cifar10", "hydra.run.dir=run2", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cifar-10-python.tar.gz" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr
