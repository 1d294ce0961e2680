"""What `mtlrun predict` writes: the model's outputs decoded per task, as CSV rows, JSON objects and PNG maps.

Per task kind (the CSV columns; the JSON Lines object nests the same values under the task's name):
- classification: `task` = the class name (the data's class list, e.g. data=table's train labels; else the
  index), `task/prob/<class>` = its softmax probability
- binary: `task` = the positive class when sigmoid > 0.5, else the negative; `task/prob/<class>` for both
- multilabel: `task` = the labels over 0.5 joined by `|`; `task/prob/<label>` per label
- regression: `task` (one output) or `task/0`, `task/1`, ... in the data's units (a standardised target is
  scaled back with the train mean and std)
- segmentation: `task` = masks/<task>/<n>.png, one class index per pixel (8-bit, 16-bit above 256 classes)
- depth: `task` = masks/<task>/<n>.png, 16-bit; depth = pixel value x `task/png_scale` (per sample: its
  maximum depth maps to 65535; negative predictions are written as 0)
- normals: `task` = masks/<task>/<n>.png, RGB = (unit normal + 1) / 2 x 255
- detection: `task/boxes` = the number of boxes found; the JSON object lists them
  ({"boxes": [{"label", "score", "box": [x1, y1, x2, y2]}, ...]}, best score first, in pixels of the image as
  the model reads it), and boxes/<task>.csv has one row per box: id, label, score, x1, y1, x2, y2
- tagging: `task` = one tag per word, joined by spaces (a word's tag is read at its first token; words the
  tokenizer cut off have none); JSON: {"words", "tags"} and, for a BIO / BIOES tag set, "entities":
  [{type, start, end}] (word indices, end inclusive, as seqeval reads the tags)
- any other task: `task/0`, `task/1`, ... the raw outputs (a dense one: masks/<task>/<n>.npy)
`<n>` is the sample's position in the output (0-based, zero-padded), not its id, which may be any text.

predictions.csv is made safe to open in a spreadsheet: a text cell (an id, a class name, a header) that starts
with = + - @ or a tab / carriage return is written with a leading `'` (OWASP's advice against CSV injection);
numbers, and texts that are plain numbers such as "-3", are written as they are. predictions.jsonl and
`Predictions.rows()` / `.records()` keep every value exactly.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import torch

from mtlrun.data.word_tags import words_of_predictions
from mtlrun.engine.records import atomic_write_bytes, atomic_write_text
from mtlrun.errors import UsageError, WriteError
from mtlrun.sequence_metrics import entity_spans

PNG_MAX = 65535
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class Predictions:
    """The outputs of every sample (float32 on the CPU), their ids, and how to read them (tasks, data)."""

    def __init__(self, ids: list, outputs: dict[str, torch.Tensor], tasks: dict, data, split: str = "test"):
        self.ids, self.outputs, self.tasks = list(ids), outputs, tasks
        self.names = {t: data.class_names(t) for t in tasks}
        self.words = None
        if any(getattr(task, "token_level", False) for task in tasks.values()):
            self.words = data.tagged_words(split)
            if self.words is None:
                raise UsageError(f"predict: {type(data).__name__} gives no words, so the tagging tasks' predictions "
                                 f"cannot be written per word")
        self.scales = {t: data.target_scale(t) for t in tasks}
        sizes = {len(o) for o in outputs.values()}
        if sizes and sizes != {len(self.ids)}:
            raise ValueError(f"{len(self.ids)} ids but outputs of {sorted(sizes)} samples")
        self._decoded: dict | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def decoded(self) -> dict[str, dict]:
        """{task: {"columns": {csv column: list}, "records": list of per-sample JSON values, "maps": array or
        None}}; computed once, over whole tensors."""
        if self._decoded is None:
            self._decoded = {t: decode(task, self.outputs[t], self.names[t], self.scales[t], self.words)
                             for t, task in self.tasks.items()}
        return self._decoded

    def rows(self, paths: dict[str, list[str]] | None = None) -> list[dict]:
        """One dict per sample: `id` and the CSV columns; `paths` fills the dense tasks' file columns."""
        columns = {"id": self.ids}
        for t, d in self.decoded().items():
            if d["maps"] is not None:
                columns[t] = (paths or {}).get(t, [""] * len(self))
            columns.update(d["columns"])
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def records(self, paths: dict[str, list[str]] | None = None) -> list[dict]:
        """One JSON object per sample: {"id": ..., task: {...}}."""
        out = [{"id": i} for i in self.ids]
        for t, d in self.decoded().items():
            for k, record in enumerate(d["records"]):
                if d["maps"] is not None:
                    record = {"file": (paths or {}).get(t, [""] * len(self))[k], **record}
                out[k][t] = record
        return out

    def write(self, folder: str | Path) -> dict[str, Path]:
        """predictions.csv, predictions.jsonl, masks/<task>/ and boxes/<task>.csv under `folder`; returns the
        paths of the first two."""
        folder = Path(folder)
        for t, d in self.decoded().items():
            if d.get("boxes") is not None:
                write_boxes(folder / "boxes" / f"{t}.csv", self.ids, d["boxes"])
        paths = {t: write_maps(folder, t, d["maps"], d["kind"]) for t, d in self.decoded().items()
                 if d["maps"] is not None}
        rows = self.rows(paths)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")  # RFC 4180's: a carriage return in a cell gets quoted
        writer.writerow([spreadsheet_safe(c) for c in (rows[0] if rows else ["id"])])
        writer.writerows([spreadsheet_safe(v) for v in row.values()] for row in rows)
        atomic_write_text(folder / "predictions.csv", text.getvalue())
        atomic_write_text(folder / "predictions.jsonl",
                          "".join(json.dumps(r, default=str) + "\n" for r in self.records(paths)))
        return {"csv": folder / "predictions.csv", "jsonl": folder / "predictions.jsonl"}


def spreadsheet_safe(value):
    """A text that a spreadsheet would run as a formula (=, +, -, @, tab, carriage return first) with a leading
    `'`, which spreadsheets show as text; numbers and texts that are plain numbers ("-3", "+1.5e3") as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def decode(task, out: torch.Tensor, names: list | None, scale, words=None) -> dict:
    """One task's outputs [N, ...] as columns, per-sample records and (dense tasks) the maps to write;
    `words`: Predictions.words, for a tagging task."""
    kind, n = getattr(task, "kind", ""), len(out)
    result = {"kind": kind, "columns": {}, "records": [{} for _ in range(n)], "maps": None}
    name = task.name
    if getattr(task, "token_level", False):
        _tags(result, task, out, words)
    elif kind == "classification":
        probs = torch.softmax(out, dim=1)
        names = names or list(range(probs.shape[1]))
        labels = [names[i] for i in probs.argmax(dim=1).tolist()]
        _labelled(result, name, labels, probs, names)
    elif kind == "binary":
        positive = torch.sigmoid(out.reshape(n))
        names = names or [0, 1]
        labels = [names[int(p)] for p in (positive > 0.5).tolist()]
        _labelled(result, name, labels, torch.stack([1 - positive, positive], dim=1), names)
    elif kind == "multilabel":
        probs = torch.sigmoid(out.reshape(n, -1))
        names = names or list(range(probs.shape[1]))
        on = (probs > 0.5).tolist()
        sets = [[names[j] for j, yes in enumerate(row) if yes] for row in on]
        result["columns"][name] = ["|".join(map(str, s)) for s in sets]
        prob_lists = probs.tolist()
        result["columns"].update({f"{name}/prob/{c}": probs[:, j].tolist() for j, c in enumerate(names)})
        result["records"] = [{"labels": s, "probs": dict(zip(map(str, names), p))} for s, p in zip(sets, prob_lists)]
    elif kind == "detection":
        names = names or list(range(task.num_classes))
        found = task.detections(out)
        result["boxes"] = [[{"label": names[c], "score": s, "box": b} for b, s, c in
                            zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())] for d in found]
        result["columns"][f"{name}/boxes"] = [len(b) for b in result["boxes"]]
        result["records"] = [{"boxes": b} for b in result["boxes"]]
    elif kind == "regression" or not getattr(task, "dense", False):
        values = out.reshape(n, -1).double()
        if scale is not None:
            values = values * torch.tensor(scale[1], dtype=torch.float64) + torch.tensor(scale[0], dtype=torch.float64)
        lists = values.tolist()
        if values.shape[1] == 1 and kind == "regression":
            result["columns"][name] = [v[0] for v in lists]
            result["records"] = [{"value": v[0]} for v in lists]
        else:
            result["columns"].update({f"{name}/{j}": values[:, j].tolist() for j in range(values.shape[1])})
            result["records"] = [{"value": v} for v in lists]
    elif kind == "segmentation":
        classes = out.argmax(dim=1).numpy()
        result["maps"] = classes.astype(np.uint8 if out.shape[1] <= 256 else np.uint16)
    elif kind == "depth":
        depth = out[:, 0].clamp_min(0)
        top = depth.reshape(n, -1).amax(dim=1) if n else depth.new_zeros(0)
        png_scale = (top / PNG_MAX).clamp_min(1e-12)
        result["maps"] = (depth / png_scale.view(-1, 1, 1)).round().clamp(0, PNG_MAX).numpy().astype(np.uint16)
        result["columns"][f"{name}/png_scale"] = png_scale.double().tolist()
        result["records"] = [{"png_scale": s} for s in png_scale.double().tolist()]
    elif kind == "normals":
        unit = torch.nn.functional.normalize(out, dim=1)
        result["maps"] = ((unit + 1) / 2 * 255).round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    else:
        result["maps"] = out.numpy()
    return result


def _labelled(result: dict, name: str, labels: list, probs: torch.Tensor, names: list) -> None:
    result["columns"][name] = labels
    result["columns"].update({f"{name}/prob/{c}": probs[:, j].tolist() for j, c in enumerate(names)})
    result["records"] = [{"label": label, "probs": dict(zip(map(str, names), p))}
                         for label, p in zip(labels, probs.tolist())]


def write_boxes(path: Path, ids: list, boxes: list[list[dict]]) -> None:
    """One CSV row per box (id, label, score, x1, y1, x2, y2), spreadsheet-safe as predictions.csv."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path.parent, exc) from exc
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(["id", "label", "score", "x1", "y1", "x2", "y2"])
    writer.writerows([spreadsheet_safe(v) for v in (i, b["label"], b["score"], *b["box"])]
                     for i, found in zip(ids, boxes) for b in found)
    atomic_write_text(path, text.getvalue())


def _tags(result: dict, task, out: torch.Tensor, words) -> None:
    sentences, starts = words
    ids = words_of_predictions(task.decode(out), starts)
    tags = [[task.tags[i] for i in row] for row in ids]
    result["columns"][task.name] = [" ".join(row) for row in tags]
    result["records"] = [{"words": w[: len(t)], "tags": t} for w, t in zip(sentences, tags)]
    if task.scheme is not None:
        for record in result["records"]:
            record["entities"] = entity_spans(record["tags"])


def write_maps(folder: Path, task: str, maps: np.ndarray, kind: str) -> list[str]:
    """One file per sample under masks/<task>/; the paths relative to `folder`, in order."""
    from PIL import Image

    target = folder / "masks" / task
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(target, exc) from exc
    width = max(5, len(str(len(maps))))
    paths = []
    for k, m in enumerate(maps):
        name = f"masks/{task}/{k:0{width}d}"
        buffer = io.BytesIO()  # encoded in memory, written atomically: a failed write names the file
        if kind in ("segmentation", "depth", "normals"):
            Image.fromarray(m).save(buffer, format="png")
            name += ".png"
        else:
            np.save(buffer, m)
            name += ".npy"
        atomic_write_bytes(folder / name, buffer.getvalue())
        paths.append(name)
    return paths
