"""`data=table` with a `type: detection` target: JSON box lists per row, scaled with the image, validated."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from PIL import Image

from mtlrun.data.table import Table
from mtlrun.errors import ConfigError

CAR = {"box": [2, 4, 10, 12], "label": "car"}
DOG = {"box": [0, 0, 20, 8], "label": "dog"}
ROWS = [  # (split, cell); images are 20 wide, 16 high
    ("train", [CAR, DOG]), ("train", []), ("train", None), ("train", [DOG]),
    ("val", [CAR]), ("test", [])]


def write(folder: Path, cells, fmt="csv", size=(16, 20)) -> Path:
    (folder / "img").mkdir(exist_ok=True)
    rows = []
    for i, (split, cell) in enumerate(cells):
        Image.fromarray(np.zeros((*size, 3), dtype=np.uint8), "RGB").save(folder / f"img/{i}.png")
        value = cell if fmt == "jsonl" or cell is None or isinstance(cell, str) else json.dumps(cell)
        rows.append({"split": split, "photo": f"img/{i}.png", "objects": value})
    if fmt == "jsonl":
        path = folder / "m.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    path = folder / "m.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "photo", "objects"])
        writer.writerows([[r["split"], r["photo"], "" if r["objects"] is None else r["objects"]] for r in rows])
    return path


def table(path, size=(8, 10), **kw):
    return Table(path=str(path), inputs={"photo": {"type": "image", "column": "photo", "size": list(size)}},
                 targets={"objects": {"type": "detection", "column": "objects", **kw}}, batch_size=4)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_boxes_scale_with_the_image_and_empty_means_background_or_unlabelled(tmp_path, fmt):
    data = table(write(tmp_path, ROWS, fmt))
    info = data.full_spec.targets["objects"]
    assert (info.kind, info.num_classes, info.dim) == ("detection", 2, 2)
    assert data.class_names("objects") == ["car", "dog"]
    train = data.dataset("train").__getitems__([0, 1, 2, 3])
    target, mask = train["targets"]["objects"], train["label_mask"]["objects"]
    assert mask.tolist() == [True, True, False, True]  # the empty cell: not labelled
    # the image is read at half its size (8 x 10 of 16 x 20): boxes halve
    assert target[0].tolist() == [[1, 2, 5, 6, 0], [0, 0, 10, 4, 1]]
    assert target[1].tolist() == [[0, 0, 0, 0, -1]] * 2  # [] = a background image: padding only
    assert target[3, 0].tolist() == [0, 0, 10, 4, 1] and target[3, 1, 4] == -1


@pytest.mark.parametrize("cell,message", [
    ("[{'box': [1, 2, 3, 4]}]", r"row 1 \(line 2\), column 'objects': malformed JSON"),
    ('{"box": [1, 2, 3, 4], "label": "car"}', "expected a list of boxes, got dict"),
    ('[{"box": [1, 2, 3], "label": "car"}]', r"'box' must be 4 finite numbers"),
    ('[{"box": [5, 2, 3, 4], "label": "car"}]', r"need 0 <= x1 < x2 and 0 <= y1 < y2"),
    ('[{"box": [1, 2, 3, "NaN"], "label": "car"}]', r"'box' must be 4 finite numbers"),
    ('[{"box": [1, 2, 30, 4], "label": "car"}]', r"box 0 \[1, 2, 30, 4\] lies outside its 20 x 16 image"),
    ('[{"box": [1, 2, 3, 4], "label": "car", "x": 1}]', "exactly the keys box and label"),
])
def test_bad_cells_name_file_row_and_what_is_valid(tmp_path, cell, message):
    path = write(tmp_path, [("train", cell), *ROWS[1:]])
    with pytest.raises(ConfigError, match=message) as info:
        table(path).full_spec
    assert str(path) in str(info.value)


def test_a_label_the_train_split_never_has_is_an_error_listing_the_labels(tmp_path):
    path = write(tmp_path, [*ROWS[:4], ("val", [{"box": [1, 1, 4, 4], "label": "cat"}]), ROWS[5]])
    with pytest.raises(ConfigError, match=r"row 5 \(line 6\), column 'objects': label 'cat' is not among the train split's "
                                          r"2 labels \('car', 'dog'\)"):
        table(path).full_spec


def test_augment_is_refused_with_boxes(tmp_path):
    with pytest.raises(ConfigError, match="data.augment: does not move the boxes .* use data.transforms"):
        Table(path=str(write(tmp_path, ROWS)), inputs={"photo": {"type": "image", "column": "photo"}},
              targets={"objects": {"type": "detection", "column": "objects"}}, augment={"hflip": True})


def test_a_loaded_state_keeps_the_classes(tmp_path):
    data = table(write(tmp_path, ROWS))
    state = data.state_dict()
    again = table(write(tmp_path, ROWS))
    again.load_state_dict(state)
    assert again.class_names("objects") == ["car", "dog"]
    assert torch.equal(again.dataset("val").__getitems__([0])["targets"]["objects"],
                       data.dataset("val").__getitems__([0])["targets"]["objects"])


# ------------------------------------------------------------------------------------ Hypothesis: any cell
NUMBERS = st.integers(min_value=-10**400, max_value=10**400) | st.floats() | st.sampled_from([0, 1, 5, 19.5, 20])
BOXES = st.lists(st.fixed_dictionaries({"box": st.lists(NUMBERS, min_size=3, max_size=5),
                                        "label": st.text(max_size=3) | st.integers() | st.none()}), max_size=3)
ANY_JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3), max_leaves=6)
TEXT = st.text(max_size=40) | st.sampled_from(["[" * 5000, "[]", "null", "NaN", "[{}]", '[{"box": null}]'])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(BOXES.map(json.dumps) | ANY_JSON.map(json.dumps) | TEXT, min_size=6, max_size=6))
def test_any_cell_reads_or_gives_the_data_error(tmp_path, cells):
    path = write(tmp_path, [(split, cell) for (split, _), cell in zip(ROWS, cells)])
    try:
        table(path).build()
    except ConfigError:
        pass
