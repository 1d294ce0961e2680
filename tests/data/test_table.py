"""data=table (mtlrun.data.table) and tasks=from_data on small manifests written in tmp dirs.

`every_type` is one hand-made table with every input and target type and empty cells; `example` is a
small copy of examples/make_multidigits_table.py's output, which the CLI test trains and evaluates.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from contracts import REPO, compose_config, read_results, run_cli
from omegaconf import OmegaConf
from PIL import Image

from mtlrun.build import build_tasks
from mtlrun.instantiate import instantiate_node
from mtlrun.task_selection import task_configs
from mtlrun.validation import validate_train
from mtlrun.data.base import ModalityInfo, TargetInfo, collate
from mtlrun.data.loading import eval_loader
from mtlrun.data.media import write_wav
from mtlrun.data.table import Table
from mtlrun.errors import ConfigError, UsageError

SPLIT = ["train", "train", "train", "train", "val", "val", "test", "test"]
ANIMAL = ["dog", "cat", None, "cat", "dog", "cat", "cat", "dog"]
FLAG = ["yes", "no", "no", "yes", None, "yes", "no", "yes"]
TAGS = ["a|b", "b", "-", None, "a", "b|a", "b", "a"]
COLOUR = ["red", "blue", None, "red", "green", "blue", "red", None]
X = [1.0, 2.0, None, 5.0, 3.0, None, 2.0, 4.0]
Y = [0.5, None, None, 1.5, 1.0, 2.0, 0.0, 1.0]
NOTE = ["a red dog", "the cat", "", "red red cat", "a dog", None, "cat", "unseen words"]

INPUTS = {
    "photo": {"type": "image", "column": "photo", "size": [6, 8], "channels": 3, "mean": [0.5], "std": [0.25]},
    "note": {"type": "text", "column": "note", "level": "word", "max_len": 4},
    "clip": {"type": "audio", "column": "clip", "sample_rate": 8000, "num_samples": 200},
    "stats": {"type": "tabular", "numeric": ["x", "y"], "categorical": ["colour"]},
}
TARGETS = {
    "animal": {"type": "classification", "column": "animal"},
    "flag": {"type": "binary", "column": "flag", "positive": "yes"},
    "tags": {"type": "multilabel", "column": "tags", "none": "-"},
    "size": {"type": "regression", "columns": ["w", "h"]},
    "seg": {"type": "segmentation", "column": "mask", "num_classes": 3},
    "depth": {"type": "depth", "column": "depth"},
}


def write_table(folder: Path, rows: list[dict], name: str = "manifest") -> tuple[Path, Path]:
    """The same rows as manifest.csv (empty = "") and manifest.jsonl (empty = null)."""
    columns = list(rows[0])
    with open(folder / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if r[c] is None else r[c] for c in columns] for r in rows])
    with open(folder / f"{name}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return folder / f"{name}.csv", folder / f"{name}.jsonl"


def make_every_type(folder: Path) -> list[dict]:
    """8 rows, every input and target type, files of every supported format, some empty cells."""
    rng = np.random.default_rng(0)
    for sub in ("img", "mask", "depth", "audio"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").save(folder / f"img/{i}.png")
        mask = np.array([[0, 1, 2, 255] * 2] * 6, dtype=np.uint8)
        Image.fromarray(np.roll(mask, i, axis=1), "L").save(folder / f"mask/{i}.png")
        if i % 2:
            np.save(folder / f"depth/{i}.npy", np.full((6, 8), 1.5 + i, dtype=np.float32))
            write_wav(folder / f"audio/{i}.wav", np.full(100, 0.5), 8000)
        else:
            depth = np.full((6, 8), 1000 * (i + 1), dtype=np.uint16)
            depth[0, 0] = 0  # invalid
            Image.fromarray(depth).save(folder / f"depth/{i}.png")  # mode I;16
            np.save(folder / f"audio/{i}.npy", np.linspace(-1, 1, 300, dtype=np.float32))
        rows.append({
            "split": SPLIT[i], "photo": None if i == 2 else f"img/{i}.png", "note": NOTE[i],
            "clip": None if i == 3 else f"audio/{i}.{'wav' if i % 2 else 'npy'}", "x": X[i], "y": Y[i],
            "colour": COLOUR[i], "animal": ANIMAL[i], "flag": FLAG[i], "tags": TAGS[i],
            "w": float(i), "h": None if i == 1 else 2.0 * i, "mask": None if i == 0 else f"mask/{i}.png",
            "depth": f"depth/{i}.{'npy' if i % 2 else 'png'}",
        })
    return rows


@pytest.fixture(scope="module")
def every_type(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("every_type")
    return write_table(folder, make_every_type(folder))


def table(path, inputs=None, targets=None, **kw) -> Table:
    return Table(path=str(path), inputs=INPUTS if inputs is None else inputs,
                 targets=TARGETS if targets is None else targets, batch_size=4, **kw)


def whole(data: Table, split: str) -> dict:
    ds = data.dataset(split)
    return ds.__getitems__(list(range(len(ds))))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for group, tensors in a.items():
        assert tensors.keys() == b[group].keys(), group
        for name, x in tensors.items():
            y = b[group][name]
            assert x.dtype == y.dtype and x.shape == y.shape, (group, name)
            assert torch.equal(x.nan_to_num(-123.0), y.nan_to_num(-123.0)) if x.is_floating_point() \
                else torch.equal(x, y), (group, name)


# ------------------------------------------------------------------------------------ parsing and layouts
def test_csv_and_jsonl_give_identical_tensors_and_state(every_type):
    from_csv, from_jsonl = table(every_type[0]), table(every_type[1])
    assert from_csv.spec == from_jsonl.spec
    assert from_csv.state_dict() == from_jsonl.state_dict()
    for split in ("train", "val", "test"):
        assert_same(whole(from_csv, split), whole(from_jsonl, split))


def test_every_input_and_target_type(every_type):
    data = table(every_type[0])
    spec = data.spec
    assert spec.modalities["photo"] == ModalityInfo("image", (3, 6, 8), {"in_channels": 3, "input_size": (6, 8)})
    assert spec.modalities["note"].kind == "text" and spec.modalities["note"].shape == (4,)
    assert spec.modalities["clip"] == ModalityInfo("audio", (200,), {"sample_rate": 8000, "num_samples": 200})
    assert spec.modalities["stats"] == ModalityInfo("tabular", (3,), {"num_numeric": 2, "cardinalities": [2]})
    assert spec.targets == {"animal": TargetInfo("classification", num_classes=2), "flag": TargetInfo("binary", dim=1),
                            "tags": TargetInfo("multilabel", dim=2), "size": TargetInfo("regression", dim=2),
                            "seg": TargetInfo("segmentation", num_classes=3), "depth": TargetInfo("depth", dim=1)}
    state = data.state_dict()
    assert state["classes"] == {"animal": ["cat", "dog"], "flag": ["no", "yes"], "tags": ["a", "b"]}
    assert state["categories"] == {"stats": [["blue", "red"]]}  # train only: green (val) is unseen
    assert state["tokenizers"]["note"]["vocab"] == ["<pad>", "<unk>", "red", "cat", "a", "dog", "the"]
    torch.save(state, Path(every_type[0]).parent / "state.pt")  # a checkpoint loads it with weights_only
    assert torch.load(Path(every_type[0]).parent / "state.pt", weights_only=True) == state

    train, val, test = whole(data, "train"), whole(data, "val"), whole(data, "test")
    x, t = train["inputs"], train["targets"]
    assert x["photo"].dtype == torch.float32 and x["photo"].shape == (4, 3, 6, 8)
    raw = torch.from_numpy(np.array(Image.open(every_type[0].parent / "img/0.png"))).permute(2, 0, 1)
    torch.testing.assert_close(x["photo"][0], (raw.float() / 255 - 0.5) / 0.25)
    assert x["note"].tolist()[0] == [4, 2, 5, 0]  # "a red dog"
    assert x["note"].tolist()[3] == [2, 2, 3, 0]
    assert test["inputs"]["note"].tolist()[1] == [1, 1, 0, 0]  # unseen words -> <unk>
    torch.testing.assert_close(x["clip"][1], torch.cat([torch.full((100,), 0.5), torch.zeros(100)]), atol=1e-4,
                               rtol=0)  # wav: 100 samples, zero-padded
    torch.testing.assert_close(x["clip"][0], torch.linspace(-1, 1, 300)[:200])  # npy: cut to num_samples
    # numeric standardised with the train mean/std (over given cells), categorical codes 1..K, 0 = empty/unseen
    mean_x, std_x = np.mean([1.0, 2.0, 5.0]), np.std([1.0, 2.0, 5.0])
    torch.testing.assert_close(x["stats"][:, 0], torch.tensor([(1 - mean_x) / std_x, (2 - mean_x) / std_x, 0.0,
                                                               (5 - mean_x) / std_x]).float())
    assert x["stats"][:, 2].tolist() == [2.0, 1.0, 0.0, 2.0]
    assert val["inputs"]["stats"][:, 2].tolist() == [0.0, 1.0]  # green: not in train
    assert t["animal"].tolist() == [1, 0, -1, 0] and t["animal"].dtype == torch.long
    assert t["flag"].tolist() == [1.0, 0.0, 0.0, 1.0] and t["flag"].shape == (4,)
    assert t["tags"][:3].tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]  # "-" is the empty set
    assert t["size"].shape == (4, 2) and t["size"][0].tolist() == [0.0, 0.0] and t["size"][2].tolist() == [2.0, 4.0]
    seg = t["seg"]
    assert seg.dtype == torch.long and seg.shape == (4, 6, 8)
    assert seg[1, 0].tolist() == [-1, 0, 1, 2, -1, 0, 1, 2]  # 255 -> -1 (ignore), rolled by 1
    depth = t["depth"]
    assert depth.shape == (4, 1, 6, 8) and depth.dtype == torch.float32
    assert depth[0, 0, 0, 0] == 0 and depth[0, 0, 1, 1] == pytest.approx(1.0)  # 1000 mm PNG -> 1 m; 0 invalid
    assert depth[1, 0, 2, 2] == pytest.approx(2.5)  # .npy taken as is


def test_empty_cells_become_masks_and_placeholders(every_type):
    data = table(every_type[1])
    train, val = whole(data, "train"), whole(data, "val")
    lm, mm = train["label_mask"], train["modality_mask"]
    assert lm["animal"].tolist() == [True, True, False, True]
    assert lm["tags"].tolist() == [True, True, True, False] and train["targets"]["tags"][3].isnan().all()
    assert lm["size"].tolist() == [True, False, True, True] and train["targets"]["size"][1].isnan().all()
    assert lm["seg"].tolist() == [False, True, True, True] and (train["targets"]["seg"][0] == -1).all()
    assert "depth" not in lm and "flag" not in lm  # fully labelled in train: no mask
    assert val["label_mask"]["flag"].tolist() == [False, True] and val["targets"]["flag"][0].isnan()
    assert mm["photo"].tolist() == [True, True, False, True] and (train["inputs"]["photo"][2] == 0).all()
    assert mm["clip"].tolist() == [True, True, True, False] and (train["inputs"]["clip"][3] == 0).all()
    assert mm["note"].tolist() == [True, True, False, True] and (train["inputs"]["note"][2] == 0).all()
    assert mm["stats"].tolist() == [True, True, False, True]  # row 3: x, y and colour all empty
    assert "stats" not in val.get("modality_mask", {})  # val row 2 lacks only x: still present, x reads 0
    assert val["inputs"]["stats"][1, 0] == 0
    # data.modalities keeps a subset of the inputs and their masks; every target stays
    sub = table(every_type[0], modalities=["photo"])
    batch = whole(sub, "train")
    assert list(batch["inputs"]) == ["photo"] and list(batch["modality_mask"]) == ["photo"]
    assert set(batch["targets"]) == set(TARGETS)


def test_class_list_from_train_only_saved_restored_and_unknown_classes(every_type, tmp_path):
    rows = make_every_type(tmp_path)
    rows[6]["animal"] = "bird"  # a test row with a class the train split never has
    csv_path, _ = write_table(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        _ = table(csv_path).spec
    assert (f"{csv_path} row 7 (line 8), column 'animal': class 'bird' is not among the train split's 2 classes "
            f"('cat', 'dog'); fix the cell, or set data.targets.animal.unknown=missing") in str(err.value)
    lenient = table(csv_path, targets={**TARGETS, "animal": {**TARGETS["animal"], "unknown": "missing"}})
    test = whole(lenient, "test")
    assert test["label_mask"]["animal"].tolist() == [False, True] and test["targets"]["animal"][0] == -1

    # a checkpoint's state decides the classes, the vocabulary and the statistics, whatever the manifest says
    trained = table(every_type[0])
    state = trained.state_dict()
    rows = make_every_type(tmp_path)
    rows[0]["animal"], rows[0]["x"] = "ant", 1000.0  # would add a class and move the mean if fitted again
    changed, _ = write_table(tmp_path, rows, "changed")
    restored = table(changed, targets={**TARGETS, "animal": {**TARGETS["animal"], "unknown": "missing"}})
    restored.load_state_dict(state)
    assert restored.spec == trained.spec and restored.state_dict() == state
    assert_same(whole(restored, "test"), whole(trained, "test"))
    strict = table(changed)
    strict.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"row 1 \(line 2\), column 'animal': class 'ant' is not among the "
                                          r"checkpoint's 2 classes"):
        _ = strict.spec


def test_unlabelled_rows_are_read_as_training_read_them_with_the_checkpoints_state(every_type, tmp_path):
    """`mtlrun predict data.path=new.csv`: a manifest with the input columns only (no targets, no split); every row
    is the test split, read with the loaded state exactly as training read the same rows."""
    trained = table(every_type[0])
    rows = make_every_type(tmp_path)  # the same files, under tmp_path
    path, _ = write_table(tmp_path, [{c: r[c] for c in ("photo", "note", "clip", "x", "y", "colour")} for r in rows],
                          "new")
    with pytest.raises(UsageError, match="load the checkpoint's data state first"):
        table(path).read_unlabelled()
    new = table(path)
    new.load_state_dict(trained.state_dict())
    new.read_unlabelled()
    assert new.spec == trained.spec and new.state_dict() == trained.state_dict()
    assert len(new.dataset("train")) == len(new.dataset("val")) == 0
    batch = whole(new, "test")
    assert batch["targets"] == {} and new.sample_ids("test") == list(range(8))
    parts = [whole(trained, split) for split in ("train", "val", "test")]  # rows 0-3, 4-5, 6-7
    for m in INPUTS:
        torch.testing.assert_close(batch["inputs"][m], torch.cat([p["inputs"][m] for p in parts]), rtol=0, atol=0)
        present = torch.cat([p.get("modality_mask", {}).get(m, torch.ones(len(p["inputs"][m]), dtype=torch.bool))
                             for p in parts])
        assert torch.equal(batch.get("modality_mask", {}).get(m, torch.ones(8, dtype=torch.bool)), present), m
    assert trained.sample_ids("test") == [6, 7]


def test_split_by_column_and_by_seeded_ratios(every_type):
    by_column = table(every_type[0])
    assert [len(by_column.dataset(s)) for s in ("train", "val", "test")] == [4, 2, 2]

    def rows(seed):
        data = table(every_type[0], inputs={"photo": INPUTS["photo"]}, targets={"size": TARGETS["size"]},
                     split={"ratios": [0.5, 0.25, 0.25], "seed": seed})
        return {s: data.dataset(s).files[0].rows.tolist() for s in ("train", "val", "test")}

    first = rows(0)
    assert first == rows(0) and first != rows(3)
    assert [len(first[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert sorted(first["train"] + first["val"] + first["test"]) == list(range(8))  # disjoint and complete


# ------------------------------------------------------------------------------------ validation
def test_validation_lists_every_problem_with_file_row_and_column(tmp_path):
    rows = make_every_type(tmp_path)
    rows[1]["photo"] = "img/missing.png"
    rows[2]["x"] = "abc"
    rows[3]["y"] = "nan"
    rows[4]["split"] = "dev"
    rows[5]["animal"] = 7  # numbers among texts
    for row in rows[:4]:
        row["w"] = None  # no regression label in train
    csv_path, _ = write_table(tmp_path, rows)
    targets = {**TARGETS, "typo": {"type": "classification", "column": "anmial"}}
    with pytest.raises(ConfigError) as err:
        _ = table(csv_path, targets=targets).spec
    text = str(err.value)
    expected = [
        f"{csv_path} row 2 (line 3), column 'photo': file not found: {tmp_path / 'img/missing.png'}",
        f"{csv_path} row 3 (line 4), column 'x': not a number: 'abc' (data.inputs.stats reads numbers)",
        (f"{csv_path} row 4 (line 5), column 'y': 'nan' is not a finite number; leave the cell empty for a "
         f"missing value"),
        f"{csv_path} row 5 (line 6), column 'split': 'dev' is not a split; every row needs train, val or test",
        (f"{csv_path}, column 'animal': mixed types: 6 text(s) (e.g. row 1: 'dog') and 1 number(s) (e.g. row 6: "
         f"'7'); a label column holds only numbers or only texts"),
        (f"data.targets.size: {csv_path}, column 'w': no row of the train split has a label; a task needs "
         f"labelled training rows"),
        (f"data.targets.typo.column: {csv_path} has no column 'anmial'; available: split, photo, note, clip, x, y, "
         f"colour, animal, flag, tags, w, h, mask, depth"),
    ]
    for line in expected:
        assert line in text
    assert text.startswith(f"invalid config ({len(expected)} problem(s))")


def test_unreadable_files_are_found_by_full_validation_or_cache_else_when_read(tmp_path):
    rows = make_every_type(tmp_path)
    (tmp_path / "img/5.png").write_bytes(b"not a png")
    Image.fromarray(np.full((6, 8), 7, np.uint8), "L").save(tmp_path / "mask/4.png")  # class 7 of 3
    csv_path, _ = write_table(tmp_path, rows)
    for options in ({"validate": "full"}, {"cache": True}):
        with pytest.raises(ConfigError) as err:
            _ = table(csv_path, **options).spec
        text = str(err.value)
        assert f"{csv_path} row 6 (line 7), column 'photo': cannot read image file {tmp_path / 'img/5.png'}: " \
               f"UnidentifiedImageError" in text
        assert f"{csv_path} row 5 (line 6), column 'mask': cannot read segmentation file " \
               f"{tmp_path / 'mask/4.png'}: holds class id(s) [7] outside 0..2 (num_classes=3" in text
    lazy = table(csv_path)  # validate: files checks existence only; reading the file names it
    assert len(lazy.dataset("val")) == 2
    with pytest.raises(Exception, match=r"row 6 \(line 7\), column 'photo': cannot read image file"):
        whole(lazy, "val")


def test_bad_options_are_listed_before_reading_anything(tmp_path):
    with pytest.raises(ConfigError) as err:
        Table(path=str(tmp_path / "nope.csv"), inputs={"a": {"type": "video", "column": "a"},
                                                       "b": {"type": "image", "colum": "b"}},
              targets={"only": {"type": "regression", "column": "y"}}, split={"ratios": [1, 0]}, validate="all")
    text = str(err.value)
    for line in ("data.path=" + str(tmp_path / "nope.csv") + ": no such file",
                 "data.inputs.a.type=video: valid input types: image, text, audio, tabular",
                 "data.inputs.b: unknown option(s) colum for type image; "
                 "valid: type, column, size, channels, mean, std",
                 "data.targets.only: 'only' is a reserved key of the tasks group",
                 "data.split.ratios=[1, 0]: must be three numbers > 0",
                 "data.validate='all': valid: files"):
        assert line in text


# ------------------------------------------------------------------------------------ loading
def test_workers_cache_and_per_item_collate_give_the_same_batches(every_type):
    plain, cached, workers = table(every_type[0]), table(every_type[0], cache=True), \
        table(every_type[0], num_workers=2)
    assert cached.dataset("train").files[0].cache.dtype == torch.uint8
    test = plain.dataset("test")  # per-item samples collate (default_collate) to the same batch
    assert_same(collate([test[i] for i in range(len(test))]), whole(plain, "test"))
    for split in ("train", "test"):
        batches = [list(eval_loader(dm.dataset(split), batch_size=3, num_workers=dm.num_workers))
                   for dm in (plain, cached, workers)]
        for other in batches[1:]:
            assert len(other) == len(batches[0])
            for a, b in zip(batches[0], other):
                assert_same(a, b)


def test_augmentation_changes_train_only_and_keeps_image_and_mask_aligned(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(12):
        ids = rng.integers(0, 4, size=(4, 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)  # 4x4 blocks of a class
        Image.fromarray(ids * 80, "L").save(tmp_path / f"img/{i}.png")  # pixel = 80 x class id
        Image.fromarray(ids, "L").save(tmp_path / f"img/m{i}.png")
        rows.append({"image": f"img/{i}.png", "mask": f"img/m{i}.png", "split": ["train", "val", "test"][i % 3]})
    csv_path, _ = write_table(tmp_path, rows)
    inputs = {"image": {"type": "image", "column": "image", "channels": 1}}  # size from the first image
    targets = {"seg": {"type": "segmentation", "column": "mask", "num_classes": 4}}
    plain = Table(path=str(csv_path), inputs=inputs, targets=targets)
    augmented = Table(path=str(csv_path), inputs=inputs, targets=targets,
                      augment={"hflip": True, "crop_scale": [0.3, 0.6]})
    assert plain.spec == augmented.spec and plain.spec.modalities["image"].shape == (1, 16, 16)
    for split in ("val", "test"):
        assert_same(whole(plain, split), whole(augmented, split))
    torch.manual_seed(0)
    batch = whole(augmented, "train")
    image, seg = batch["inputs"]["image"][:, 0], batch["targets"]["seg"]
    assert not torch.equal(seg, whole(plain, "train")["targets"]["seg"])
    agree = ((image * 255 / 80).round().long() == seg).float().mean()
    assert agree > 0.85  # bilinear image vs nearest mask differ only along block edges
    flip_only = Table(path=str(csv_path), inputs=inputs, targets=targets, augment={"hflip": True})
    batch = whole(flip_only, "train")
    assert torch.equal((batch["inputs"]["image"][:, 0] * 255 / 80).round().long(), batch["targets"]["seg"])


# ------------------------------------------------------------------------------------ tasks=from_data
def table_config(path: Path, *overrides: str):
    cfg = compose_config(["data=table", "tasks=from_data", *overrides])
    cfg.data.path = str(path)
    cfg.data.inputs = OmegaConf.create({"photo": INPUTS["photo"]})
    cfg.data.targets = OmegaConf.create(TARGETS)
    return cfg


def test_from_data_builds_one_task_of_the_default_type_per_target(every_type, monkeypatch):
    cfg = table_config(every_type[0])
    validate_train(cfg)
    tasks = build_tasks(cfg, instantiate_node(cfg.data, "data").spec)
    assert {n: type(t).__name__ for n, t in tasks.items()} == {
        "animal": "Classification", "flag": "Binary", "tags": "Multilabel", "size": "Regression",
        "seg": "Segmentation", "depth": "Depth"}
    assert (tasks["animal"].num_classes, tasks["tags"].num_labels, tasks["size"].dim, tasks["seg"].num_classes) \
        == (2, 2, 2, 3)
    assert all(t.weight == 1.0 for t in tasks.values())
    assert cfg.tasks.seg.num_classes == 3  # expanded into the config like a preset

    cfg = table_config(every_type[0], "tasks.only=[animal,size]", "+tasks.size.weight=0.5", "+tasks.size.loss=l1")
    assert list(task_configs(cfg, instantiate_node(cfg.data, "data").full_spec.targets)) == ["animal", "size"]
    tasks = build_tasks(cfg, Table(**{k: v for k, v in OmegaConf.to_container(cfg.data).items()
                                      if k != "_target_"}).spec)
    assert list(tasks) == ["animal", "size"] and (tasks["size"].weight, tasks["size"].loss_name) == (0.5, "l1")

    import mtlrun.tasks

    monkeypatch.delattr(mtlrun.tasks, "Depth")
    with pytest.raises(ConfigError, match=r"tasks.from_data: the data's target 'depth' is depth, which needs "
                                          r"mtlrun.tasks.Depth; this version of mtlrun has no such task type"):
        build_tasks(table_config(every_type[0]), table(every_type[0]).spec)
    build_tasks(table_config(every_type[0], "tasks.only=[animal]"), table(every_type[0]).spec)  # left out: fine


# ------------------------------------------------------------------------------------ the example, end to end
def load_example_script():
    spec = importlib.util.spec_from_file_location("make_table", REPO / "examples" / "make_multidigits_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_example_trains_and_eval_reproduces_its_test_metrics(tmp_path):
    out = tmp_path / "data"
    load_example_script().main(["--out", str(out), "--n-train", "96", "--n-val", "32", "--n-test", "32"])
    with open(out / "manifest.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 160 and any(r["right"] == "" for r in csv_rows) and any(r["note"] == "" for r in csv_rows)

    run = tmp_path / "run"
    common = ["--config-dir", str(REPO / "examples" / "configs"), "experiment=multidigits_table",
              f"data.path={out / 'manifest.jsonl'}", "data.batch_size=32", "trainer.max_epochs=1",
              "trainer.device=cpu", "trainer.progress_bar=false"]
    proc = run_cli("train", *common, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["data"]
    assert state["classes"]["parity"] == ["even", "odd"] and state["classes"]["left"] == list(range(10))
    assert state["tokenizers"]["note"]["vocab"][:2] == ["<pad>", "<unk>"]

    evaluated = tmp_path / "eval"
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={evaluated}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trained, measured = read_results(run), read_results(evaluated)
    test_keys = {k for k in trained if k.startswith("test/")}
    assert test_keys == set(measured) and {"test/left/accuracy", "test/parity/f1", "test/sum/mae"} <= test_keys
    assert all(trained[k] == measured[k] for k in test_keys)


@pytest.mark.e2e
def test_digits_av_example_writes_digits_av_and_trains_from_the_files(tmp_path):
    """examples/make_digits_av_table.py writes exactly data=digits_av's samples; the example config trains on
    all four modalities from the files."""
    from mtlrun.data.digits_av import DigitsAV

    spec = importlib.util.spec_from_file_location("make_av", REPO / "examples" / "make_digits_av_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "data"
    module.main(["--out", str(out), "--n-train", "64", "--n-val", "16", "--n-test", "16"])
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    raw = DigitsAV(n_train=64, n_val=16, n_test=16).raw_splits()
    assert [int(r["digit"]) for r in rows] == [int(d) for s in ("train", "val", "test") for d in raw[s]["digits"]]
    assert [r["text"] for r in rows[:64]] == raw["train"]["text"]
    lo, hi = module.IMAGE_RANGE
    png = np.asarray(Image.open(out / rows[3]["image"]), dtype=np.float64) / 255 * (hi - lo) + lo
    np.testing.assert_allclose(png, raw["train"]["image"][3, 0], atol=(hi - lo) / 255)

    run = tmp_path / "run"
    proc = run_cli("train", "--config-dir", str(REPO / "examples" / "configs"), "experiment=digits_av_table",
                   f"data.path={out / 'manifest.csv'}", "data.batch_size=16", "trainer.max_epochs=1",
                   "trainer.device=cpu", "trainer.progress_bar=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert {k.split(".")[4] for k in state["model"] if k.startswith("encoder.stages.0.encoders.")} == {
        "image", "audio", "text", "tabular"}
    assert state["data"]["classes"]["parity"] == ["even", "odd"]
    assert {"test/digit/accuracy", "test/parity/f1", "test/ink_total/mae"} <= set(read_results(run))


def test_standardized_regression_uses_train_statistics_and_keeps_them_in_the_state(every_type):
    size = {**TARGETS["size"], "standardize": True}
    data = table(every_type[0], inputs={"stats": INPUTS["stats"]}, targets={"size": size})
    raw = table(every_type[0], inputs={"stats": INPUTS["stats"]}, targets={"size": TARGETS["size"]})
    # train rows 0, 2, 3 have both columns (row 1 has no h): w = 0, 2, 3 and h = 0, 4, 6
    w, h = np.array([0.0, 2.0, 3.0]), np.array([0.0, 4.0, 6.0])
    stats = data.state_dict()["targets"]["size"]
    assert stats["mean"] == pytest.approx([w.mean(), h.mean()]) and stats["std"] == pytest.approx([w.std(), h.std()])
    for split in ("train", "test"):  # val and test are scaled with the train split's statistics
        expected = (whole(raw, split)["targets"]["size"] - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
        torch.testing.assert_close(whole(data, split)["targets"]["size"], expected.float(), equal_nan=True)
    assert raw.state_dict()["targets"] == {}

    with pytest.raises(ConfigError, match=r"data.targets.size.standardize='yes': must be true"):
        _ = table(every_type[0], targets={"size": {**TARGETS["size"], "standardize": "yes"}}).spec
