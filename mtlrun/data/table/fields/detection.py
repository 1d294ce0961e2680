"""`type: detection` target: a column of box lists, given to the task as float [M, 5] (mtlrun.detection's layout).

A cell is a JSON list of objects `{"box": [x1, y1, x2, y2], "label": "car"}` (a JSON text in a CSV cell, a
list in a JSON Lines manifest): the boxes in pixels of the row's image file (x to the right, y down,
0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height), each with a label. `[]` is an image with no object (a
background image, which trains); an empty cell is an image whose boxes are not labelled (masked). The boxes
are scaled with the image to the size the model reads (the image input's `size`). Classes: the train split's
labels, sorted, kept in the checkpoint; a label the train split never has is an error. M is the most boxes of
one row in the manifest; shorter lists are padded with class -1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mtlrun.checks import is_number
from mtlrun.data import media
from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import canon, sorted_labels
from mtlrun.data.table.fields.base import REQUIRED, Field, Reading

EXAMPLE = '[{"box": [10, 20, 50, 80], "label": "car"}]'


class DetectionField(Field):
    """Options: image (the image input the boxes are drawn on; null: the only image input)."""

    defaults = {"column": REQUIRED, "image": None}

    def check_options(self, problems: list[str]) -> None:
        self.need(problems, self.options["image"] is None or isinstance(self.options["image"], str), "image",
                  "must be null (the only image input) or the name of an image input under data.inputs")

    def _image(self, reading: Reading):
        images = [f for f in reading.inputs if f.type == "image"]
        wanted = self.options["image"]
        chosen = [f for f in images if wanted is None or f.name == wanted]
        if len(chosen) != 1:
            names = ", ".join(f.name for f in images) or "none"
            reading.problems.add(f"{self.key}.image={wanted}: the boxes need the image input they are drawn on; "
                                 f"image inputs: {names}" + (" (give its name)" if len(chosen) > 1 else ""))
            return None
        return chosen[0]

    def read(self, reading: Reading, train: np.ndarray):
        m, problems = reading.m, reading.problems
        image = self._image(reading)
        if image is None:
            return None
        lists, present = [], np.zeros(m.rows, dtype=bool)
        for row, cell in enumerate(m.cells[self.column]):
            objects = None if cell is None else self._parse(reading, row, cell)
            lists.append(objects)
            present[row] = objects is not None
        if not reading.train_has_some(self, present, train, self.column):
            return None
        classes = reading.fitted("classes", self.name,
                                 lambda: sorted_labels(label for i in train if present[i] for _, label in lists[i]))
        index = {c: i for i, c in enumerate(classes)}
        size = image.image_size(reading)
        most = max((len(objects) for objects in lists if objects), default=0)
        self.rows = most
        target = torch.full((m.rows, most, 5), -1.0)
        target[..., :4] = 0.0
        for row in np.flatnonzero(present):
            if not lists[row]:
                continue  # a background image: padding only
            width_height = self._file_size(reading, image, row)
            for k, (box, label) in enumerate(lists[row]):
                if label not in index:
                    shown = ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
                    problems.add(f"{m.at(int(row), self.column)}: label {label!r} is not among {reading.origin} "
                                 f"{len(classes)} labels ({shown})", group=("unknown", self.key))
                    continue
                if width_height is None:
                    continue  # the image input reports its file
                w, h = width_height
                x1, y1, x2, y2 = box
                if x2 > w or y2 > h:
                    problems.add(f"{m.at(int(row), self.column)}: box {k} {list(box)} lies outside its {w} x {h} image "
                                 f"(valid: 0 <= x1 < x2 <= {w}, 0 <= y1 < y2 <= {h})", group=("outside", self.key))
                    continue
                sy, sx = size[0] / h, size[1] / w
                target[row, k] = torch.tensor([x1 * sx, y1 * sy, x2 * sx, y2 * sy, index[label]])
        return target, present

    def _file_size(self, reading: Reading, image: Field, row: int) -> tuple[int, int] | None:
        """(width, height) of the row's image file, None when it cannot be read (the image input says why)."""
        cell = reading.m.cells[image.column][row]
        if not isinstance(cell, str):
            return None
        path = Path(cell.strip()).expanduser()
        try:
            h, w = media.image_size(str(path if path.is_absolute() else reading.root / path))
        except media.MediaError:
            return None
        return w, h

    def _parse(self, reading: Reading, row: int, cell) -> list | None:
        """[(box, label), ...] of a cell, or None (and a problem) when it is not a valid box list."""
        where = reading.m.at(row, self.column)

        def bad(what: str) -> None:
            reading.problems.add(f"{where}: {what}; a cell is a JSON list such as {EXAMPLE} ([] = no object, an "
                                 f"empty cell = not labelled)", group=("cell", self.key))

        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except (ValueError, RecursionError) as exc:  # RecursionError: brackets nested thousands deep
                bad(f"malformed JSON ({exc})")
                return None
        if not isinstance(cell, list):
            bad(f"expected a list of boxes, got {type(cell).__name__}")
            return None
        out = []
        for k, item in enumerate(cell):
            if not isinstance(item, dict) or set(item) != {"box", "label"}:
                bad(f"box {k} must be an object with exactly the keys box and label, got {item!r}")
                return None
            box = item["box"]
            numbers = isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)
            if not numbers:
                bad(f"box {k}: 'box' must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
                return None
            x1, y1, x2, y2 = map(float, box)
            if not (0 <= x1 < x2 and 0 <= y1 < y2):
                bad(f"box {k} {box}: need 0 <= x1 < x2 and 0 <= y1 < y2 (pixels, x to the right, y down)")
                return None
            kind, label = canon(item["label"])
            if kind not in ("number", "text"):
                bad(f"box {k}: 'label' must be a text or a number, got {item['label']!r}")
                return None
            out.append(([v if isinstance(v, int) else float(v) for v in box], label))
        return out

    def info(self, reading: Reading) -> TargetInfo:
        """dim: the box rows per sample (None where the column was not read: predicting from inputs only)."""
        classes = reading.state["classes"][self.name]
        return TargetInfo("detection", num_classes=len(classes), dim=self.rows, labels=tuple(map(str, classes)))

    rows: int | None = None
