"""`data=coco`: a dataset in the COCO format (an `instances_*.json` and an image folder per split), the format
most detection datasets ship in.

Config: `root` (the dataset folder), and per split (`train`, `val`, `test`; `test: null` = the val split again)
`{annotations: <json under root>, images: <image folder under root>}`. Every image of an annotation file is a
labelled sample (the file lists all of its objects; an image without annotation is a background image), read
into memory at start-up and resized to `image_size` (boxes and masks scale with it).

Targets (`targets`, a list of):
- `detection`: float [M, 5] rows (x1, y1, x2, y2, class), mtlrun.detection's layout; COCO's `bbox` is
  [x, y, width, height] in pixels of the image file. Classes: the categories sorted by id (names from the file).
- `segmentation`: long [H, W], 0 = background, 1 + class elsewhere, from each annotation's polygons or RLE
  (pycocotools: `pip install "mtlrun[detection]"`); later annotations paint over earlier ones.
- `categories`: float [C], which categories appear in the image (a multilabel target).
`crowd`: what an annotation with `iscrowd: 1` (a region of many objects) becomes: `ignore` (left out of every
target, as COCO's evaluation does not count it as an object) or `error`.

Bad annotations stop the run before training (exit 2), each named by file and annotation id with what would be
valid: a bbox that is not 4 finite numbers, with width or height <= 0 or outside its image, an unknown category
id, an annotation of an image id the file does not list, a missing image file, a file_name leading outside the
image folder, and a file that is not such JSON. Nothing is clipped or dropped silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from mtlrun.checks import import_extra, is_number
from mtlrun.data import media
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.scenes import DenseDataset, image_size_pair
from mtlrun.data.table.fields.files import inside
from mtlrun.errors import ConfigError, Problems

TARGETS = ("detection", "segmentation", "categories")
CROWD = ("ignore", "error")


def _polygons_or_rle(shape) -> bool:
    if isinstance(shape, list):
        return bool(shape) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                   and all(is_number(v) for v in p) for p in shape)
    return isinstance(shape, dict) and set(shape) == {"counts", "size"} and isinstance(shape["size"], list) \
        and len(shape["size"]) == 2 and isinstance(shape["counts"], (str, list))


class Coco(DataModule):
    name = "coco"

    def __init__(self, root: str | None, train: dict, val: dict, test: dict | None = None, image_size=(64, 64),
                 targets=("detection",), crowd: str = "ignore", **loader):
        super().__init__(**loader)
        problems: list[str] = []
        if not isinstance(root, str) or not root.strip():
            problems.append(f"data.root={root!r}: give the COCO-format dataset's folder, e.g. data.root=data/mycoco")
            root = "."
        self.root = Path(root).expanduser()
        self.files = {}
        for split, entry in (("train", train), ("val", val), *((("test", test),) if test is not None else ())):
            if not hasattr(entry, "keys") or set(entry.keys()) != {"annotations", "images"}:
                problems.append(f"data.{split}={entry!r}: must be {{annotations: <instances json under data.root>, "
                                f"images: <image folder under data.root>}}")
                continue
            self.files[split] = (self.root / str(entry["annotations"]), self.root / str(entry["images"]))
        self.image_size = image_size_pair(image_size, "data.image_size", problems)
        targets = [] if isinstance(targets, str) or not hasattr(targets, "__iter__") else [str(t) for t in targets]
        if not targets or any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
            problems.append(f"data.targets={targets or '[]'}: a list of distinct targets from {', '.join(TARGETS)}")
        if crowd not in CROWD:
            problems.append(f"data.crowd={crowd!r}: valid: {', '.join(CROWD)} (what an iscrowd: 1 annotation becomes)")
        if problems:
            raise ConfigError(problems)
        if "segmentation" in targets:  # one start-up error, not one "cannot be decoded" per annotation later
            import_extra("pycocotools.mask", "detection", "data=coco's segmentation target")
        self.targets, self.crowd = targets, crowd
        self._read: dict | None = None

    # ------------------------------------------------------------------ reading and validation
    def _load(self) -> dict:
        if self._read is None:
            problems = Problems(max_shown=20)
            parsed = {split: self._parse(split, *paths, problems) for split, paths in self.files.items()}
            problems.raise_if_any()
            names = {split: p["categories"] for split, p in parsed.items()}
            if len({tuple(n.items()) for n in names.values()}) != 1:
                listed = "; ".join(f"{s}: {n}" for s, n in names.items())
                problems.add(f"data: the annotation files list different categories ({listed}); every split needs "
                             f"the same id -> name list")
                problems.raise_if_any()
            categories = names["train"]
            splits = {s: self._tensors(p, categories, problems) for s, p in parsed.items()}
            problems.raise_if_any()
            splits.setdefault("test", splits["val"])  # test: null
            self._read = {"categories": categories, "splits": splits}
        return self._read

    def _parse(self, split: str, annotations: Path, folder: Path, problems: Problems) -> dict:
        """The images (id -> file, width, height) and their valid annotations of one file; problems collected."""
        try:
            with open(annotations, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            problems.add(f"data.{split}.annotations: cannot read {annotations}: {exc.strerror or exc}")
            return {"categories": {}, "images": {}, "objects": {}}
        except (ValueError, RecursionError) as exc:
            problems.add(f"{annotations}: not a JSON file of the COCO format ({type(exc).__name__}: {exc})")
            return {"categories": {}, "images": {}, "objects": {}}
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                          "categories")):
            problems.add(f"{annotations}: needs the lists images, annotations and categories of the COCO format")
            return {"categories": {}, "images": {}, "objects": {}}
        categories = {}
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                problems.add(f"{annotations}: category {c!r}: needs an integer id and a name", group=("cat", split))
                continue
            categories[c["id"]] = c["name"]
        images = {}
        for im in data["images"]:
            ok = isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str) \
                and all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height"))
            if not ok:
                problems.add(f"{annotations}: image {im!r}: needs an integer id, a file_name and width, height > 0",
                             group=("image", split))
                continue
            path = folder / im["file_name"]
            if not inside(os.path.abspath(path), os.path.abspath(folder)):  # `..` or an absolute path
                problems.add(f"{annotations}: image id {im['id']}: file_name {im['file_name']!r} leads outside the "
                             f"image folder {folder}; a COCO file_name is a path under it", group=("outside", split))
                continue
            if not path.is_file():
                problems.add(f"{annotations}: image id {im['id']}: file not found: {path}", group=("file", split))
                continue
            images[im["id"]] = (str(path), im["width"], im["height"])
        objects = {i: [] for i in images}
        for a in data["annotations"]:
            where = f"{annotations}: annotation id {a.get('id') if isinstance(a, dict) else a!r}"
            if not isinstance(a, dict):
                problems.add(f"{where}: must be an object", group=("ann", split))
                continue
            if a.get("image_id") not in images:
                problems.add(f"{where}: image_id {a.get('image_id')!r} is not an image of the file's images list "
                             f"(or its file is missing)", group=("missing", split))
                continue
            if a.get("category_id") not in categories:
                problems.add(f"{where}: category_id {a.get('category_id')!r} is not a category of the file; valid "
                             f"ids: {', '.join(map(str, sorted(categories)))}", group=("category", split))
                continue
            if a.get("iscrowd", 0):
                if self.crowd == "error":
                    problems.add(f"{where}: iscrowd: 1 (a crowd region); set data.crowd=ignore to leave crowd "
                                 f"regions out of the targets", group=("crowd", split))
                continue
            _, w, h = images[a["image_id"]]
            box = a.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
                problems.add(f"{where}: bbox {box!r}: must be 4 finite numbers [x, y, width, height]",
                             group=("bbox", split))
                continue
            x, y, bw, bh = map(float, box)
            if not (bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h):
                problems.add(f"{where}: bbox {box} is not inside its {w} x {h} image with width and height > 0 "
                             f"(valid: x >= 0, y >= 0, x + width <= {w}, y + height <= {h})", group=("bbox", split))
                continue
            shape = a.get("segmentation")
            if "segmentation" in self.targets and not _polygons_or_rle(shape):
                problems.add(f"{where}: segmentation {str(shape)[:80]}: must be polygons (lists of >= 6 finite "
                             f"numbers x, y, x, y, ...) or an RLE {{counts, size}}", group=("segm", split))
                continue
            objects[a["image_id"]].append((x, y, x + bw, y + bh, a["category_id"], shape))
        return {"categories": categories, "images": images, "objects": objects}

    def _tensors(self, parsed: dict, categories: dict, problems: Problems) -> tuple[DenseDataset, list]:
        h, w = self.image_size
        index = {cid: i for i, cid in enumerate(sorted(categories))}
        ids = sorted(parsed["images"])
        most = max((len(parsed["objects"][i]) for i in ids), default=0)
        n = len(ids)
        image = torch.empty(n, 3, h, w, dtype=torch.uint8)
        boxes = torch.full((n, most, 5), -1.0)
        boxes[..., :4] = 0.0
        seg = torch.zeros(n, h, w, dtype=torch.long) if "segmentation" in self.targets else None
        present = torch.zeros(n, len(categories))
        for k, image_id in enumerate(ids):
            path, width, height = parsed["images"][image_id]
            try:
                image[k] = media.load_image(path, (h, w), 3)
            except media.MediaError as exc:
                problems.add(f"image id {image_id}: cannot read {path}: {exc}", group=("decode",))
                continue
            sx, sy = w / width, h / height
            for j, (x1, y1, x2, y2, cid, polygons) in enumerate(parsed["objects"][image_id]):
                boxes[k, j] = torch.tensor([x1 * sx, y1 * sy, x2 * sx, y2 * sy, index[cid]])
                present[k, index[cid]] = 1.0
                if seg is not None:
                    try:
                        area = torch.from_numpy(self._mask(polygons, height, width)).bool()
                    except Exception as exc:  # pycocotools on a damaged RLE: name the image, stop before training
                        problems.add(f"image id {image_id}: a segmentation cannot be decoded ({exc})",
                                     group=("segm",))
                        continue
                    area = media._nearest(area[None].to(torch.uint8), (h, w))[0].bool()
                    seg[k][area] = index[cid] + 1
        targets = {"detection": boxes, "segmentation": seg, "categories": present}
        return DenseDataset({"image": image}, {t: targets[t] for t in self.targets}), ids

    @staticmethod
    def _mask(segmentation, height: int, width: int) -> np.ndarray:
        """uint8 [height, width] of an annotation's polygons or RLE (pycocotools)."""
        mask = import_extra("pycocotools.mask", "detection", "data=coco's segmentation target")
        if isinstance(segmentation, list):
            rles = mask.frPyObjects(segmentation, height, width)
            return mask.decode(mask.merge(rles))
        if isinstance(segmentation.get("counts"), list):
            segmentation = mask.frPyObjects(segmentation, height, width)
        return mask.decode(segmentation)

    # ------------------------------------------------------------------ DataModule interface
    @property
    def full_spec(self) -> DataSpec:
        h, w = self.image_size
        read = self._load()
        names = tuple(read["categories"][c] for c in sorted(read["categories"]))
        most = max(ds.targets["detection"].shape[1] for ds, _ in read["splits"].values()) \
            if "detection" in self.targets else None
        infos = {"detection": TargetInfo("detection", num_classes=len(names), dim=most, labels=names),
                 "segmentation": TargetInfo("segmentation", num_classes=len(names) + 1),
                 "categories": TargetInfo("multilabel", dim=len(names))}
        return DataSpec({"image": ModalityInfo("image", (3, h, w), {"in_channels": 3, "input_size": (h, w)})},
                        {t: infos[t] for t in self.targets})

    def build(self) -> dict[str, DenseDataset]:
        return {split: ds for split, (ds, _) in self._load()["splits"].items()}

    def sample_ids(self, split: str, column: str | None = None) -> list:
        """The COCO image ids of the split, in order."""
        if column is not None:
            return super().sample_ids(split, column)
        return list(self._load()["splits"][split][1])

    def class_names(self, task: str) -> list | None:
        names = [self._load()["categories"][c] for c in sorted(self._load()["categories"])]
        return {"detection": names, "categories": names, "segmentation": ["background", *names]}.get(task)
