"""data=coco on a tiny COCO-format folder the test writes: boxes, masks and categories from instances JSON,
scaled with the images; every kind of bad annotation exits 2 naming the file and the annotation id."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from contracts import read_results, requires, run_cli
from PIL import Image

from mtlrun.data.coco import Coco
from mtlrun.errors import ConfigError, UsageError

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def write_split(root: Path, split: str, annotations: list, images: int = 3, size=(40, 20)) -> dict:
    """`images` images of width x height `size`, image 1 with nothing in it; returns the split's config."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    listed = []
    for i in range(images):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8), "RGB").save(root / split / f"{i}.png")
        listed.append({"id": 100 + i, "file_name": f"{i}.png", "width": size[0], "height": size[1]})
    data = {"images": listed, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return {"annotations": f"annotations/{split}.json", "images": split}


GOOD = [{"id": 1, "image_id": 100, "category_id": 7, "bbox": [4, 2, 16, 10], "iscrowd": 0,
         "segmentation": [[4, 2, 20, 2, 20, 12, 4, 12]]},
        {"id": 2, "image_id": 102, "category_id": 3, "bbox": [0, 0, 40, 20], "iscrowd": 0,
         "segmentation": [[0, 0, 40, 0, 40, 20, 0, 20]]},
        {"id": 3, "image_id": 102, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 1}]


def coco(root, annotations=GOOD, **kw):
    train = write_split(root, "train", annotations)
    val = write_split(root, "val", GOOD)
    return Coco(root=str(root), train=train, val=val, image_size=[10, 20], batch_size=2, **kw)


@requires("pycocotools", "detection")  # the polygons become masks through pycocotools.mask
def test_boxes_masks_and_categories_scale_with_the_image(tmp_path):
    data = coco(tmp_path, targets=["detection", "segmentation", "categories"])
    spec = data.full_spec
    assert spec.targets["detection"].labels == ("cat", "dog") and spec.targets["detection"].dim == 1
    assert spec.targets["segmentation"].num_classes == 3 and spec.targets["categories"].dim == 2
    assert data.sample_ids("train") == [100, 101, 102] and data.class_names("detection") == ["cat", "dog"]
    batch = data.dataset("train").__getitems__([0, 1, 2])
    det = batch["targets"]["detection"]
    # 40 x 20 images read at 20 x 10: boxes halve; the crowd annotation (id 3) is not a target
    assert det[:, 0].tolist() == [[2, 1, 10, 6, 1], [0, 0, 0, 0, -1], [0, 0, 20, 10, 0]]
    assert batch["targets"]["categories"].tolist() == [[0, 1], [0, 0], [1, 0]]
    seg = batch["targets"]["segmentation"]
    assert seg.shape == (3, 10, 20) and (seg[1] == 0).all() and (seg[2] == 1).all()
    assert (seg[0, 1:6, 2:10] == 2).all() and seg[0].eq(2).sum() <= 8 * 6 + 20  # the dog, a little beyond


@pytest.mark.parametrize("change, message", [
    ({"bbox": [30, 2, 16, 10]}, r"annotation id 1: bbox \[30, 2, 16, 10\] is not inside its 40 x 20 image"),
    ({"bbox": [4, 2, 0, 10]}, r"annotation id 1: bbox \[4, 2, 0, 10\] is not inside .* width and height > 0"),
    ({"bbox": [4, 2, "x", 10]}, r"annotation id 1: bbox \[4, 2, 'x', 10\]: must be 4 finite numbers"),
    ({"category_id": 5}, r"annotation id 1: category_id 5 is not a category of the file; valid ids: 3, 7"),
    ({"image_id": 999}, r"annotation id 1: image_id 999 is not an image of the file's images list"),
])
def test_bad_annotations_name_file_and_annotation_id(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as info:
        coco(tmp_path, [{**GOOD[0], **change}, *GOOD[1:]]).full_spec
    assert str(tmp_path / "annotations" / "train.json") in str(info.value)


def test_crowd_error_missing_files_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match=r"annotation id 3: iscrowd: 1 .* data.crowd=ignore"):
        coco(tmp_path, crowd="error").full_spec
    (tmp_path / "train" / "1.png").unlink()
    with pytest.raises(ConfigError, match=r"image id 101: file not found"):
        Coco(root=str(tmp_path), train={"annotations": "annotations/train.json", "images": "train"},
             val={"annotations": "annotations/val.json", "images": "val"}).full_spec
    (tmp_path / "annotations" / "val.json").write_text("[" * 100000)
    with pytest.raises(ConfigError, match="val.json: not a JSON file of the COCO format"):
        Coco(root=str(tmp_path), train={"annotations": "annotations/val.json", "images": "val"},
             val={"annotations": "annotations/val.json", "images": "val"}).full_spec
    for name in ("../train/0.png", str(tmp_path / "train" / "0.png")):  # a file, but outside the image folder
        listing = json.loads((tmp_path / "annotations" / "train.json").read_text())
        listing["images"][0]["file_name"] = name
        (tmp_path / "annotations" / "bad.json").write_text(json.dumps(listing))
        with pytest.raises(ConfigError, match=rf"image id 100: file_name '{re.escape(name)}' leads outside the image "
                                              rf"folder"):
            Coco(root=str(tmp_path), train={"annotations": "annotations/bad.json", "images": "val"},
                 val={"annotations": "annotations/val.json", "images": "val"}).full_spec
    with pytest.raises(ConfigError, match=r"data.targets=\['boxes'\]: a list of distinct targets"):
        Coco(root=str(tmp_path), train={}, val={}, targets=["boxes"])


def test_segmentation_without_pycocotools_is_one_usage_error_before_reading(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UsageError, match=r"data=coco's segmentation target needs the pycocotools.mask package, "
                                         r"which is not installed: pip install \"mtlrun\[detection\]\""):
        coco(tmp_path, targets=["detection", "segmentation"])


@pytest.mark.e2e
@requires("torchmetrics", "detection")  # the detection task's COCO metrics
@requires("pycocotools", "detection")
def test_it_trains_with_tasks_from_data(tmp_path):
    train = write_split(tmp_path / "ds", "train", GOOD)
    val = write_split(tmp_path / "ds", "val", GOOD)
    proc = run_cli("train", "data=coco", f"data.root={tmp_path / 'ds'}", f"data.train.annotations={train['annotations']}",
                   f"data.val.annotations={val['annotations']}", "data.image_size=[16,16]",
                   "data.targets=[detection,categories]", "tasks=from_data", "backbone/image=segnet",
                   "backbone.image.channels=[8,16]", "data.batch_size=2", "trainer.max_epochs=1", "trainer.device=cpu",
                   "trainer.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = read_results(tmp_path / "run")
    assert "test/detection/map_cat" in results and "test/categories/f1" in results
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["config"]["data"]["_target_"] \
        == "mtlrun.data.coco.Coco"


NUMBER = st.integers(min_value=-10**400, max_value=10**400) | st.floats() | st.sampled_from([0, 1, 5, 19.5, 40])
ANNOTATION = st.fixed_dictionaries({"id": st.integers(), "image_id": st.sampled_from([100, 101, 999, "x", None]),
                                    "category_id": st.sampled_from([3, 7, 5, None, "3"]),
                                    "bbox": st.lists(NUMBER, max_size=5) | st.none() | st.text(max_size=4)},
                                   optional={"iscrowd": st.integers(0, 1) | st.text(max_size=2),
                                             "segmentation": st.lists(st.lists(NUMBER, max_size=8), max_size=2)
                                             | st.fixed_dictionaries({"counts": st.text(max_size=6),
                                                                      "size": st.lists(st.integers(-2, 50), max_size=3)})})


@requires("pycocotools", "detection")  # it decodes segmentations (without the extra: one start-up error)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(annotations=st.lists(ANNOTATION | st.integers() | st.text(max_size=5), max_size=4))
def test_any_annotations_read_or_give_the_data_error(tmp_path, annotations):
    try:
        coco(tmp_path, annotations, targets=["detection", "segmentation", "categories"]).build()
    except ConfigError:
        pass
