"""`data=table`: your own data from one manifest, a table of file paths, texts, numbers and labels.

The manifest is a CSV file (header row), JSON Lines (one object per line; `.jsonl` / `.ndjson`), both in
`encoding` (UTF-8 by default), or, when pyarrow is installed (mtlrun does not depend on it), Parquet. Each
declared input becomes a modality and each declared target a task's labels (configs/data/table.yaml lists
every key):

    inputs:                                     # name: {type, column(s), options}
      image: {type: image, column: image_path, size: [64, 64], channels: 3}
      note:  {type: text, column: note, level: word, max_len: 32}
      clip:  {type: audio, column: wav_path, sample_rate: 8000, num_samples: 4000}
      stats: {type: tabular, numeric: [ink, width], categorical: [pen]}
    targets:
      digit: {type: classification, column: label}
      odd:   {type: binary, column: parity}
      tags:  {type: multilabel, column: tags, sep: "|"}
      size:  {type: regression, columns: [w, h]}
      seg:   {type: segmentation, column: mask_path, num_classes: 5}
      depth: {type: depth, column: depth_path}
    split: {column: split}                      # or {ratios: [0.8, 0.1, 0.1], seed: 0}

Layouts (mtlrun.data.base): image float [C, H, W]; text long [L] (mtlrun.data.text.Tokenizer fitted on
the train split); audio float [T]; tabular float [N + K]: the numeric columns standardised with the train
split's mean and std, then the categorical columns as codes 1..K_j (the train split's categories, sorted;
0 = empty or unseen). Targets: classification long (index into the train split's sorted class list),
binary float (1 = `positive`, by default the larger of the two values), multilabel float [K] (labels of
the train split, sorted), regression float [D] (raw values), segmentation long [H, W] (-1 = ignore),
depth float [1, H, W] (0 = invalid). Files are read by mtlrun.data.media.

Everything fitted on the train split (class lists, categories, numeric statistics, vocabularies, image
sizes taken from the files) is the module's `state_dict`, which travels in the checkpoint, so `mtlrun eval`
reads the manifest exactly as training did.

Empty cells (an empty CSV field, JSON null or a missing key): an empty target cell makes the row
unlabelled for that task (`label_mask` False; the target holds -1 or NaN, never a label); an empty input
cell makes the modality missing for the row (`modality_mask` False, input zeros). A tabular input is
missing only when all its cells are empty; a single empty numeric cell reads as the train mean (0).

Validation runs before the model is built and lists every problem at once, each naming the manifest, the
row (data rows count from 1; the file line is given for CSV and JSON Lines) and the column. `validate:
files` (default) parses every cell and checks that every referenced file exists (one directory listing per
folder) inside data.root (unless `allow_outside_root`: no `..`, absolute path or symbolic link leading out);
`validate: full` also decodes every file. `cache: true` decodes every file once at start-up and keeps the
tensors in memory, which validates them as fully as `full`. A label option read by YAML as a boolean
(`positive: yes`) stands for the one label of its column that reads as that boolean (yes / y / true / on / 1).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mtlrun.schema import RESERVED_TASK_KEYS
from mtlrun.checks import is_int, is_real
from mtlrun.data import media
from mtlrun.data.base import SPLITS, DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.text import LEVELS, Tokenizer
from mtlrun.errors import ConfigError, UsageError

log = logging.getLogger("mtlrun")

REQUIRED = object()
# Options of each type, with their defaults (REQUIRED: no default). `type` is implied everywhere.
INPUT_TYPES = {
    "image": {"column": REQUIRED, "size": None, "channels": 3, "mean": None, "std": None},
    "text": {"column": REQUIRED, "level": "char", "max_len": 64, "min_freq": 1, "lowercase": True},
    "audio": {"column": REQUIRED, "sample_rate": REQUIRED, "num_samples": REQUIRED},
    "tabular": {"numeric": [], "categorical": []},
}
TARGET_TYPES = {
    "classification": {"column": REQUIRED, "unknown": "error"},
    "binary": {"column": REQUIRED, "positive": None, "unknown": "error"},
    "multilabel": {"column": REQUIRED, "sep": "|", "none": None, "unknown": "error"},
    "regression": {"column": None, "columns": None, "standardize": False},
    "segmentation": {"column": REQUIRED, "num_classes": REQUIRED, "ignore_index": 255, "size": None},
    "depth": {"column": REQUIRED, "png_scale": 0.001, "size": None},
}
FILE_TYPES = ("image", "audio", "segmentation", "depth")
LABEL_TYPES = ("classification", "binary", "multilabel")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
VALIDATE = ("files", "full")
UNKNOWN = ("error", "missing")
MAX_SHOWN = 10  # problems shown per column and kind before "... and N more"
CSV_FIELD_LIMIT = 2**31 - 1  # the largest csv.field_size_limit every platform takes (a C long)
# What a YAML boolean in an option that names a label (`positive: yes` is read as True) stands for.
BOOLEAN_WORDS = {True: ("yes", "y", "true", "on", "1"), False: ("no", "n", "false", "off", "0")}


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class _Problems:
    """Problems found so far; at most MAX_SHOWN per group (a column and a kind of problem), then a count."""

    def __init__(self):
        self.groups: dict[object, list[str]] = {}
        self.counts: dict[object, int] = {}

    def add(self, message: str, group=None) -> None:
        group = message if group is None else group
        self.counts[group] = self.counts.get(group, 0) + 1
        shown = self.groups.setdefault(group, [])
        if len(shown) < MAX_SHOWN:
            shown.append(message)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def lines(self) -> list[str]:
        out = []
        for group, shown in self.groups.items():
            out += shown
            if self.counts[group] > len(shown):
                out.append(f"... and {self.counts[group] - len(shown)} more like the above")
        return out

    def raise_if_any(self) -> None:
        if self:
            raise ConfigError(self.lines())


# ----------------------------------------------------------------------------------------- the manifest
@dataclass
class Manifest:
    """The table as read: `cells[column][row]` (None = empty), and each row's line in the file."""

    path: str
    columns: list[str]
    cells: dict[str, list]
    numbers: np.ndarray  # [rows] 1-based data row number (malformed rows are counted, then left out)
    lines: np.ndarray | None  # [rows] file line of each row (CSV, JSON Lines), None for Parquet

    @property
    def rows(self) -> int:
        return len(next(iter(self.cells.values()))) if self.cells else 0

    def at(self, row: int, column: str) -> str:
        return _where((self.path, self.numbers, self.lines, column), row)


def _where(origin: tuple, row: int) -> str:
    """`<manifest> row N (line L), column 'c'` for row index `row`; origin = (path, numbers, lines, column)."""
    path, numbers, lines, column = origin
    line = f" (line {int(lines[row])})" if lines is not None else ""
    return f"{path} row {int(numbers[row])}{line}, column '{column}'"


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_manifest(path: str, problems: _Problems, encoding: str = "utf-8") -> Manifest:
    """Read a CSV / JSON Lines / Parquet manifest; malformed rows are added to `problems` and skipped."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt == "csv":
        return _read_csv(path, problems, encoding)
    if fmt == "jsonl":
        return _read_jsonl(path, problems, encoding)
    return _read_parquet(path)


def _lines(path: str, encoding: str, problems: _Problems, newline: str | None = None):
    """The text lines of a manifest; a byte that is not `encoding` stops the read with its line (a problem)."""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # skips the BOM Excel writes
    with open(path, newline=newline, encoding=codec) as f:
        try:
            yield from f
            return
        except UnicodeDecodeError:
            pass
    problems.add(_undecodable(path, encoding, codec))
    problems.raise_if_any()


def _undecodable(path: str, encoding: str, codec: str) -> str:
    """Where the first byte that `codec` cannot decode is (read again as a whole: this runs only on failure)."""
    data = Path(path).read_bytes()
    try:
        data.decode(codec)
        where, bad = "", "a byte"
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode(codec, errors="replace")
        line, character = before.count("\n") + 1, len(before) - before.rfind("\n")
        where = f" line {line}, character {character}"
        bad = data[exc.start:exc.end]
        bad = f"byte{'s' if len(bad) > 1 else ''} " + " ".join(f"0x{b:02x}" for b in bad)
    return (f"{path}{where}: {bad} is not valid {encoding} (data.encoding={encoding}); set data.encoding to the "
            f"file's encoding, e.g. data.encoding=latin-1 (or cp1252 for files saved by Excel on Windows), or "
            f"save the file as UTF-8")


@contextmanager
def _csv_cells_of_any_size():
    """csv refuses cells over 128 KiB (field_size_limit); a long text reads from JSON Lines, so from CSV too.

    The limit is process-wide state: raised for this read only, then restored."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: str, problems: _Problems, encoding: str) -> Manifest:
    with _csv_cells_of_any_size():
        reader = csv.reader(_lines(path, encoding, problems, newline=""))
        header = next(reader, None)
        if header is None:
            raise ConfigError([f"{path}: the file is empty; a CSV manifest starts with a header row of column names"])
        header = [h.strip() for h in header]
        _check_header(path, header, problems)
        rows, lines, numbers, number = [], [], [], 0
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            number += 1
            if len(record) != len(header):
                problems.add(f"{path} row {number} (line {reader.line_num}): has {len(record)} fields, the header "
                             f"has {len(header)}; quote cells that contain commas", group=("csv-fields", path))
                continue
            rows.append(record)
            lines.append(reader.line_num)
            numbers.append(number)
    cells = {h: [None if not v.strip() else v for v in column] for h, column in
             zip(header, zip(*rows) if rows else [()] * len(header))}
    return Manifest(path, header, {h: list(c) for h, c in cells.items()}, np.array(numbers), np.array(lines))


def _check_header(path: str, header: list[str], problems: _Problems) -> None:
    seen = set()
    for i, name in enumerate(header):
        if not name:
            problems.add(f"{path}: column {i + 1} of the header has no name")
        elif name in seen:
            problems.add(f"{path}: the header names column '{name}' twice")
        seen.add(name)


def _read_jsonl(path: str, problems: _Problems, encoding: str) -> Manifest:
    records, lines, numbers, columns, number = [], [], [], {}, 0
    for line_number, line in enumerate(_lines(path, encoding, problems), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"{path} row {number} (line {line_number}): not valid JSON ({exc.msg} at character "
                         f"{exc.colno})", group=("json", path))
            continue
        if not isinstance(record, dict):
            problems.add(f"{path} row {number} (line {line_number}): a JSON Lines manifest holds one object "
                         f"per line, got a {type(record).__name__}", group=("json", path))
            continue
        records.append(record)
        lines.append(line_number)
        numbers.append(number)
        columns.update(dict.fromkeys(record))
    cells = {c: [None if _empty(r.get(c)) else r.get(c) for r in records] for c in columns}
    return Manifest(path, list(columns), cells, np.array(numbers), np.array(lines))


def _read_parquet(path: str) -> Manifest:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        message = (f"data.path={path}: reading Parquet needs pyarrow, which mtlrun does not install; "
                   f"`pip install pyarrow`, or save the table as CSV or JSON Lines")
        raise ConfigError([message]) from None
    table = pq.read_table(path)
    cells = {name: [None if _empty(v) else v for v in table.column(name).to_pylist()] for name in table.column_names}
    return Manifest(path, list(table.column_names), cells, np.arange(1, table.num_rows + 1), None)


# ----------------------------------------------------------------------------------------- cell values
def _canon(value) -> tuple[str | None, object]:
    """(kind, canonical value) of a cell: kind is number | text | boolean | list | object (None if empty).

    Text that reads as a finite number is a number, so "1" and "1.0" in a CSV are the same label, and a
    label column of a CSV and of a JSON Lines file give the same classes."""
    if _empty(value):
        return None, None
    if isinstance(value, bool):
        return "boolean", value
    if is_real(value):
        value = float(value)
        if not math.isfinite(value):
            return "text", str(value)
        return "number", int(value) if value.is_integer() else value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return "text", text
        if not math.isfinite(number):
            return "text", text
        return "number", int(number) if number.is_integer() else number
    if isinstance(value, (list, tuple)):
        return "list", list(value)
    return "object", value


def _means(flag: bool, label) -> bool:
    """Whether a label (a canonical cell value) reads as the boolean `flag`: yes / True / 1 / y for True."""
    if isinstance(label, bool):
        return label == flag
    if is_real(label):
        return label == int(flag)
    return isinstance(label, str) and label.strip().lower() in BOOLEAN_WORDS[flag]


def _labels(manifest: Manifest, column: str, problems: _Problems) -> list | None:
    """Canonical values of a label or category column (None = empty cell), or None (and problems) when a
    cell is not a single number / text / boolean, or the column mixes those kinds."""
    values, examples, counts, bad = [], {}, {}, False
    for row, cell in enumerate(manifest.cells[column]):
        kind, value = _canon(cell)
        values.append(value)
        if kind is None:
            continue
        counts[kind] = counts.get(kind, 0) + 1
        examples.setdefault(kind, (row, cell))
        if kind not in ("number", "text", "boolean"):
            problems.add(f"{manifest.at(row, column)}: expected one label (a number or a text), got {cell!r}",
                         group=("kind", column))
            bad = True
    if len(counts) > 1:
        parts = [f"{n} {k}(s) (e.g. row {manifest.numbers[examples[k][0]]}: {examples[k][1]!r})"
                 for k, n in counts.items()]
        problems.add(f"{manifest.path}, column '{column}': mixed types: {' and '.join(parts)}; a label column "
                     f"holds only numbers or only texts", group=("mixed", column))
        bad = True
    return None if bad else values


def _sorted_labels(labels) -> list:
    """Deterministic order: numbers numerically, texts alphabetically, false before true."""
    return sorted(set(labels), key=lambda v: (type(v).__name__ if not is_real(v) else "", v))


def _numbers(manifest: Manifest, column: str, key: str, problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values [rows], present [rows]) of a numeric column; NaN / non-numbers are problems."""
    values = np.zeros(manifest.rows, dtype=np.float64)
    present = np.zeros(manifest.rows, dtype=bool)
    for row, cell in enumerate(manifest.cells[column]):
        if cell is None:
            continue
        if isinstance(cell, bool) or not isinstance(cell, (int, float, str)):
            problems.add(f"{manifest.at(row, column)}: not a number: {cell!r} ({key} reads numbers)",
                         group=("number", column))
            continue
        try:
            number = float(cell.strip() if isinstance(cell, str) else cell)
        except ValueError:
            problems.add(f"{manifest.at(row, column)}: not a number: {cell!r} ({key} reads numbers)",
                         group=("number", column))
            continue
        if not math.isfinite(number):
            problems.add(f"{manifest.at(row, column)}: {cell!r} is not a finite number; leave the cell empty "
                         f"for a missing value", group=("number", column))
            continue
        values[row], present[row] = number, True
    return values, present


# ----------------------------------------------------------------------------------------- declared fields
@dataclass
class FieldSpec:
    """One declared input or target: its type, the column(s) it reads and its options (defaults filled)."""

    role: str  # inputs | targets
    name: str
    type: str
    options: dict

    @property
    def key(self) -> str:
        return f"data.{self.role}.{self.name}"

    @property
    def columns(self) -> list[str]:
        o = self.options
        if self.type == "tabular":
            return [*o["numeric"], *o["categorical"]]
        if self.type == "regression" and o.get("columns") is not None:
            return list(o["columns"])
        return [o["column"]]

    @property
    def column(self) -> str:
        return self.columns[0]


def _parse_fields(role: str, node, problems: list[str]) -> list[FieldSpec]:
    types = INPUT_TYPES if role == "inputs" else TARGET_TYPES
    node = _plain(node)
    if node is None or node == {}:
        return []
    if not isinstance(node, dict):
        problems.append(f"data.{role}: must map names to {{type: ..., column: ...}}, got {node!r}")
        return []
    fields = []
    for name, entry in node.items():
        key = f"data.{role}.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{key}: must be a mapping such as {{type: {next(iter(types))}, column: <column>}}, "
                            f"got {entry!r}")
            continue
        kind = entry.get("type")
        if kind not in types:
            problems.append(f"{key}.type={kind}: valid {role[:-1]} types: {', '.join(types)}")
            continue
        if role == "targets" and str(name) in RESERVED_TASK_KEYS:
            problems.append(f"{key}: '{name}' is a reserved key of the tasks group; give the target another name")
        defaults = types[kind]
        unknown = [k for k in entry if k != "type" and k not in defaults]
        if unknown:
            problems.append(f"{key}: unknown option(s) {', '.join(map(str, unknown))} for type {kind}; valid: "
                            f"type, {', '.join(defaults)}")
        options = {k: entry.get(k, v) for k, v in defaults.items()}
        missing = [k for k, v in options.items() if v is REQUIRED]
        if missing:
            problems.append(f"{key}: type {kind} needs {', '.join(missing)}")
            continue
        spec = FieldSpec(role, str(name), kind, options)
        before = len(problems)
        _check_options(spec, problems)
        if len(problems) == before:
            fields.append(spec)
    return fields


def _check_options(f: FieldSpec, problems: list[str]) -> None:
    o, key = f.options, f.key

    def need(cond, option, what):
        if not cond:
            problems.append(f"{key}.{option}={o[option]!r}: {what}")

    def is_size(v):
        return v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(s) and s >= 1 for s in v))

    def is_column(v):
        return isinstance(v, str) and v.strip() != ""

    if "column" in o and o["column"] is not None:
        need(is_column(o["column"]), "column", "must be a column name")
    if f.type == "image":
        need(is_size(o["size"]), "size", "must be null (the first training image's size) or [H, W] of ints >= 1")
        need(o["channels"] in (1, 3), "channels", "must be 1 (grey) or 3 (RGB)")
        for option in ("mean", "std"):
            v = o[option]
            ok = v is None or (isinstance(v, (list, tuple)) and len(v) in (1, o["channels"])
                               and all(is_real(x) for x in v))
            need(ok, option, "must be null or a list of 1 or `channels` numbers")
        if isinstance(o["std"], (list, tuple)) and any(is_real(x) and x <= 0 for x in o["std"]):
            problems.append(f"{key}.std={o['std']}: every value must be > 0")
    elif f.type == "text":
        try:
            Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"], lowercase=o["lowercase"])
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: {exc} (levels: {', '.join(LEVELS)})")
    elif f.type == "audio":
        need(is_int(o["sample_rate"]) and o["sample_rate"] >= 1, "sample_rate", "must be an integer >= 1 (Hz)")
        need(is_int(o["num_samples"]) and o["num_samples"] >= 1, "num_samples",
             "must be an integer >= 1 (clips are cut or zero-padded to it)")
    elif f.type == "tabular":
        for option in ("numeric", "categorical"):
            v = o[option]
            need(isinstance(v, (list, tuple)) and all(is_column(c) for c in v), option,
                 "must be a list of column names")
        if not (o["numeric"] or o["categorical"]):
            problems.append(f"{key}: a tabular input needs numeric: [...] and/or categorical: [...] columns")
    elif f.type in LABEL_TYPES:
        need(o["unknown"] in UNKNOWN, "unknown", f"valid: {', '.join(UNKNOWN)} (what a val/test label that the "
                                                 f"train split never has becomes)")
        if f.type == "multilabel":
            need(isinstance(o["sep"], str) and o["sep"] != "", "sep", "must be a non-empty separator string")
            need(o["none"] is None or isinstance(o["none"], (str, bool)), "none",
                 "must be null or the cell text that means an empty label set")
        if f.type == "binary" and isinstance(o["positive"], (list, dict)):
            problems.append(f"{key}.positive={o['positive']!r}: must be null or one label value")
    elif f.type == "regression":
        if (o["column"] is None) == (o["columns"] is None):
            problems.append(f"{key}: give exactly one of column: <name> or columns: [<name>, ...]")
        elif o["columns"] is not None:
            need(isinstance(o["columns"], (list, tuple)) and o["columns"] and all(is_column(c) for c in o["columns"]),
                 "columns", "must be a non-empty list of column names")
        need(isinstance(o["standardize"], bool), "standardize",
             "must be true (targets as (value - train mean) / train std) or false (raw values)")
    elif f.type == "segmentation":
        need(is_int(o["num_classes"]) and o["num_classes"] >= 2, "num_classes", "must be an integer >= 2")
        need(o["ignore_index"] is None or (is_int(o["ignore_index"]) and o["ignore_index"] >= 0), "ignore_index",
             "must be null or the pixel value (>= 0) that marks ignored pixels (255 by default)")
        need(is_size(o["size"]), "size", "must be null (the image input's size) or [H, W] of ints >= 1")
    elif f.type == "depth":
        need(is_real(o["png_scale"]) and o["png_scale"] > 0, "png_scale",
             "must be a number > 0 (16-bit PNG value x png_scale = depth; 0.001: millimetres to metres)")
        need(is_size(o["size"]), "size", "must be null (the image input's size) or [H, W] of ints >= 1")


def _parse_split(split, problems: list[str]) -> dict:
    split = _plain(split)
    if split is None:
        return {"column": "split"}
    if not isinstance(split, dict) or set(split) - {"column", "ratios", "seed"} \
            or ("column" in split) == ("ratios" in split):
        problems.append(f"data.split={split!r}: give {{column: <name>}} (a column of train / val / test) or "
                        f"{{ratios: [train, val, test], seed: 0}}")
        return {}
    if "column" in split:
        if "seed" in split:
            problems.append("data.split.seed: only used with ratios")
        if not isinstance(split["column"], str) or not split["column"].strip():
            problems.append(f"data.split.column={split['column']!r}: must be a column name")
        return split
    ratios, seed = split["ratios"], split.get("seed", 0)
    if not isinstance(ratios, (list, tuple)) or len(ratios) != 3 or not all(is_real(r) and r >= 0 for r in ratios) \
            or not all(r > 0 for r in ratios):
        problems.append(f"data.split.ratios={ratios!r}: must be three numbers > 0 (train, val, test), e.g. "
                        f"[0.8, 0.1, 0.1]; they are normalised to sum to 1")
    if not is_int(seed) or seed < 0:
        problems.append(f"data.split.seed={seed!r}: must be an integer >= 0")
    return {"ratios": ratios, "seed": seed}


# ----------------------------------------------------------------------------------------- file reading
@dataclass(frozen=True)
class Reader:
    """Reads one file of a file column into its per-sample layout (see mtlrun.data.media)."""

    type: str  # image | audio | segmentation | depth
    size: tuple[int, int] | None = None
    channels: int = 3
    num_classes: int = 0
    ignore_index: int | None = None
    png_scale: float = 0.001
    sample_rate: int = 0
    num_samples: int = 0

    def __call__(self, path: str) -> torch.Tensor:
        if self.type == "image":
            return media.load_image(path, self.size, self.channels)
        if self.type == "segmentation":
            return media.load_mask(path, self.size, self.num_classes, self.ignore_index)
        if self.type == "depth":
            return media.load_depth(path, self.size, self.png_scale)
        return media.load_audio(path, self.sample_rate, self.num_samples)

    @property
    def shape(self) -> tuple[int, ...]:
        h_w = tuple(self.size or ())
        return {"image": (self.channels, *h_w), "segmentation": h_w, "depth": (1, *h_w),
                "audio": (self.num_samples,)}[self.type]

    @property
    def stored_dtype(self) -> torch.dtype:
        """What the cache keeps: uint8 pixels, int16 class ids (-1 = ignore), float32 otherwise."""
        return {"image": torch.uint8, "segmentation": torch.int16}.get(self.type, torch.float32)

    def blank(self, n: int) -> torch.Tensor:
        """Placeholder rows for empty cells: zeros for inputs, -1 / NaN for targets (never a label)."""
        if self.type == "segmentation":
            return torch.full((n, *self.shape), -1, dtype=torch.int64)
        if self.type == "depth":
            return torch.full((n, *self.shape), float("nan"))
        return torch.zeros((n, *self.shape), dtype=self.stored_dtype)


@dataclass
class FileColumn:
    """The files of one field in one split: paths ('' = empty cell), where each came from, an optional cache."""

    role: str
    name: str
    reader: Reader
    paths: np.ndarray  # str [N]
    rows: np.ndarray  # int [N] manifest row of each sample
    origin: tuple  # (manifest path, row numbers, lines or None, column): for messages at load time
    cache: torch.Tensor | None = None

    def describe(self, i: int) -> str:
        return _where(self.origin, int(self.rows[i]))

    def read(self, i: int) -> torch.Tensor:
        try:
            return self.reader(str(self.paths[i]))
        except (media.MediaError, OSError) as exc:
            raise UsageError(f"data=table: {self.describe(i)}: cannot read {self.reader.type} file "
                             f"{self.paths[i]}: {exc}") from None

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        if self.cache is not None:
            out = self.cache.index_select(0, torch.as_tensor(indices, dtype=torch.long))
            return out.long() if self.reader.type == "segmentation" else out
        n = len(indices)
        out = self.reader.blank(n)
        for j, i in enumerate(indices):
            if self.paths[i]:
                out[j] = self.read(int(i))
        return out


class _DecodeAll(Dataset):
    """Every non-empty file of a column, decoded, each as (tensor, None) or (None, problem)."""

    def __init__(self, column: FileColumn):
        self.column = column
        self.todo = np.flatnonzero(column.paths != "")

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        i = int(self.todo[k])
        try:
            return i, self.column.read(i), None
        except UsageError as exc:
            return i, None, str(exc).removeprefix("data=table: ")


def _passthrough(items):
    return items


# ----------------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augment:
    """Train-time augmentation drawn once per sample and applied alike to all its images, masks and depth maps.

    `hflip`: horizontal flip with probability 1/2. `crop_scale` [lo, hi]: a random resized crop keeping a
    fraction lo..hi of the area, aspect ratio 3/4..4/3, resized back. Both act on the normalised coordinates
    of every tensor, so inputs and dense targets of different resolutions stay aligned; images are
    resampled bilinearly, masks and depth by nearest neighbour (no class id or depth is ever blended).
    Draws come from torch's global RNG, in this order: flips [B], then scale, ratio, top, left [B] each.
    """

    hflip: bool = False
    crop_scale: tuple[float, float] | None = None

    def __bool__(self) -> bool:
        return self.hflip or self.crop_scale is not None

    def theta(self, b: int) -> torch.Tensor:
        """[B, 2, 3] affine maps from output to input normalised coordinates."""
        sx, sy, tx, ty = torch.ones(b), torch.ones(b), torch.zeros(b), torch.zeros(b)
        flip = torch.rand(b) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * torch.rand(b)
            ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(b))
            sx = torch.sqrt(area * ratio).clamp(max=1.0)  # the crop's width and height, as fractions
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            top, left = torch.rand(b) * (1 - sy), torch.rand(b) * (1 - sx)
            tx, ty = -1 + 2 * left + sx, -1 + 2 * top + sy
        sx = torch.where(flip, -sx, sx)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        return theta

    @staticmethod
    def apply(x: torch.Tensor, theta: torch.Tensor, nearest: bool) -> torch.Tensor:
        """x [B, C, H, W] (or [B, H, W] for masks) resampled through theta, same size and dtype."""
        squeeze = x.dim() == 3
        src = (x.unsqueeze(1) if squeeze else x).to(torch.float32)
        grid = F.affine_grid(theta, list(src.shape), align_corners=False)
        out = F.grid_sample(src, grid, mode="nearest" if nearest else "bilinear", padding_mode="border",
                            align_corners=False)
        out = out.squeeze(1) if squeeze else out
        return out.round().to(x.dtype) if not x.is_floating_point() else out


# ----------------------------------------------------------------------------------------- the dataset
class TableDataset(Dataset):
    """One split: in-memory tensors for table values, files decoded per batch (or from the cache).

    `__getitems__` builds a whole batch in the batch-dict layout; nothing is held open between calls,
    so DataLoader workers are safe. Images are normalised after augmentation; an empty image cell gives
    zeros (its modality_mask is False)."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], files: list[FileColumn], length: int,
                 normalise: dict[str, tuple[torch.Tensor, torch.Tensor]], augment: Augment | None = None):
        self.tensors, self.files, self.length = tensors, files, length
        self.normalise, self.augment = normalise, augment

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices: Sequence[int]) -> dict:
        indices = [int(i) for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {group: {name: t.index_select(0, idx) for name, t in d.items()} for group, d in self.tensors.items()}
        for column in self.files:
            batch[column.role][column.name] = column.gather(indices)
        images = [c.name for c in self.files if c.reader.type == "image"]
        for name in images:
            batch["inputs"][name] = batch["inputs"][name].to(torch.float32).div_(255.0)
        if self.augment:
            theta = self.augment.theta(len(indices))
            for column in self.files:
                if column.reader.type != "audio":
                    group = batch[column.role]
                    group[column.name] = Augment.apply(group[column.name], theta, nearest=column.reader.type != "image")
        for name in images:
            mean, std = self.normalise[name]
            x = batch["inputs"][name].sub_(mean).div_(std)
            present = batch.get("modality_mask", {}).get(name)
            if present is not None:
                x.mul_(present.view(-1, 1, 1, 1).to(x.dtype))
        return batch

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {group: {name: t[0] for name, t in d.items()} for group, d in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> TableDataset:
        keep = set(keep)
        tensors = {group: ({n: t for n, t in d.items() if n in keep} if group in ("inputs", "modality_mask") else d)
                   for group, d in self.tensors.items()}
        tensors = {group: d for group, d in tensors.items() if d or group in ("inputs", "targets")}
        files = [c for c in self.files if c.role == "targets" or c.name in keep]
        return TableDataset(tensors, files, self.length, self.normalise, self.augment)


# ----------------------------------------------------------------------------------------- the data module
@dataclass
class _Prepared:
    spec: DataSpec
    splits: dict[str, TableDataset]
    state: dict = field(default_factory=dict)


class Table(DataModule):
    """Your own data from a manifest; see the module docstring and configs/data/table.yaml."""

    name = "table"

    def __init__(self, path: str | None = None, root: str | None = None, inputs=None, targets=None, split=None,
                 validate: str = "files", cache: bool = False, augment=None, encoding: str = "utf-8",
                 allow_outside_root: bool = False, **loader):
        super().__init__(**loader)
        problems: list[str] = []
        if not isinstance(path, str) or not path.strip():
            problems.append(f"data.path={path!r}: give the manifest, a .csv or .jsonl file (.parquet with pyarrow), "
                            f"e.g. data.path=data/manifest.csv (see examples/README.md)")
        elif Path(path).suffix.lower() not in SUFFIXES:
            problems.append(f"data.path={path}: unknown format {Path(path).suffix or '(no suffix)'}; valid: "
                            f"{', '.join(SUFFIXES)}")
        elif not Path(path).expanduser().is_file():
            problems.append(f"data.path={path}: no such file (looked for {Path(path).expanduser().resolve()}; "
                            f"relative paths start at the current directory)")
        self.inputs = _parse_fields("inputs", inputs, problems)
        self.targets = _parse_fields("targets", targets, problems)
        if not self.inputs and not _plain(inputs):
            problems.append("data.inputs: declare at least one input, e.g. {image: {type: image, column: path}}")
        if not self.targets and not _plain(targets):
            problems.append("data.targets: declare at least one target, e.g. {label: {type: classification, "
                            "column: label}}")
        self.split = _parse_split(split, problems)
        if validate not in VALIDATE:
            problems.append(f"data.validate={validate!r}: valid: files (cells parsed, every file exists), full "
                            f"(also decodes every file)")
        if not isinstance(cache, bool):
            problems.append(f"data.cache={cache!r}: must be true or false")
        if not isinstance(allow_outside_root, bool):
            problems.append(f"data.allow_outside_root={allow_outside_root!r}: must be true or false")
        if not _is_text_encoding(encoding):
            problems.append(f"data.encoding={encoding!r}: not a text encoding Python knows; e.g. utf-8, latin-1, "
                            f"cp1252, utf-16")
        self.augment = _parse_augment(augment, problems)
        if self.augment and not any(f.type == "image" for f in self.inputs):
            problems.append("data.augment: flips and crops act on images; this data has no image input")
        if problems:
            raise ConfigError(problems)
        self.path = str(Path(path).expanduser())
        self.root = Path(root).expanduser() if root else Path(self.path).parent
        self.validate, self.cache = validate, cache
        self.encoding, self.allow_outside_root = encoding, allow_outside_root
        self._loaded: dict | None = None
        self._prepared: _Prepared | None = None

    # ------------------------------------------------------------------ DataModule interface
    @property
    def full_spec(self) -> DataSpec:
        return self._prepare().spec

    def build(self) -> dict[str, Dataset]:
        return dict(self._prepare().splits)

    def state_dict(self) -> dict:
        return self._prepare().state

    def load_state_dict(self, state: dict) -> None:
        expected = {"classes", "categories", "numeric", "tokenizers", "sizes", "targets"}
        if isinstance(state, dict) and set(state) == expected - {"targets"}:
            state = {**state, "targets": {}}  # written before regression targets could be standardised
        if not isinstance(state, dict) or set(state) != expected:
            raise UsageError(f"data=table: the checkpoint's data state has keys {sorted(state or {})}, expected "
                             f"{sorted(expected)}; it was not written by this data module")
        self._loaded = state
        self._prepared = None

    # ------------------------------------------------------------------ reading and validation
    def _prepare(self) -> _Prepared:
        if self._prepared is None:
            self._prepared = _Builder(self).run()
        return self._prepared


def _is_text_encoding(name) -> bool:
    try:
        io.TextIOWrapper(io.BytesIO(), encoding=name)  # what open() takes: no hex or base64 codecs
    except (LookupError, TypeError):
        return False
    return isinstance(name, str)  # None would mean the locale's encoding


def _parse_augment(node, problems: list[str]) -> Augment:
    node = _plain(node) or {}
    if not isinstance(node, dict) or set(node) - {"hflip", "crop_scale"}:
        problems.append(f"data.augment={node!r}: valid keys: hflip (true/false), crop_scale (null or [lo, hi])")
        return Augment()
    hflip, scale = node.get("hflip", False), node.get("crop_scale")
    if not isinstance(hflip, bool):
        problems.append(f"data.augment.hflip={hflip!r}: must be true or false")
        hflip = False
    if scale is not None:
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(is_real(s) for s in scale)
                and 0 < scale[0] <= scale[1] <= 1):
            problems.append(f"data.augment.crop_scale={scale!r}: must be null or [lo, hi] with 0 < lo <= hi <= 1 "
                            f"(the fraction of the area a random crop keeps)")
            scale = None
        else:
            scale = (float(scale[0]), float(scale[1]))
    return Augment(hflip, scale)


class _Builder:
    """Reads the manifest once, validates every cell and file, fits on train, and builds the splits."""

    def __init__(self, table: Table):
        self.t = table
        self.loaded = table._loaded
        self.problems = _Problems()
        self.state = {"classes": {}, "categories": {}, "numeric": {}, "tokenizers": {}, "sizes": {}, "targets": {}}
        self.cardinalities: dict[str, list[int]] = {}  # tabular input -> categories per categorical column
        self.vocab: dict[str, tuple[int, int]] = {}  # text input -> (vocab_size, max_len)

    def run(self) -> _Prepared:
        t, p = self.t, self.problems
        m = read_manifest(t.path, p, t.encoding)
        self.m = m
        if m.rows == 0:
            p.add(f"{t.path}: the manifest has no data rows")
            p.raise_if_any()
        fields = [f for f in [*t.inputs, *t.targets] if self._columns_exist(f)]
        self.splits = self._assign_splits()
        train = self.splits["train"]
        values: dict[str, tuple] = {}
        for f in fields:
            handler = getattr(self, f"_{f.type}")
            values[f.name if f.role == "inputs" else f"target:{f.name}"] = handler(f, train)
        p.raise_if_any()
        prepared = self._assemble(fields, values)
        if t.validate == "full" or t.cache:
            self._decode_everything(prepared)
            p.raise_if_any()
        return prepared

    # ------------------------------------------------------------------ columns and splits
    def _columns_exist(self, f: FieldSpec) -> bool:
        missing = [c for c in f.columns if c not in self.m.cells]
        for c in missing:
            option = "column" if "column" in f.options and f.options.get("column") == c else \
                next(o for o in ("columns", "numeric", "categorical") if c in (f.options.get(o) or []))
            self.problems.add(f"{f.key}.{option}: {self.m.path} has no column '{c}'; available: "
                              f"{', '.join(self.m.columns)}")
        return not missing

    def _assign_splits(self) -> dict[str, np.ndarray]:
        m, s, p = self.m, self.t.split, self.problems
        if "ratios" in s:
            r = np.asarray(s["ratios"], dtype=np.float64)
            r = r / r.sum()
            n_val, n_test = round(r[1] * m.rows), round(r[2] * m.rows)
            order = np.random.default_rng(s["seed"]).permutation(m.rows)
            parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
            parts = {k: np.sort(parts[k]) for k in SPLITS}
        else:
            column = s["column"]
            if column not in m.cells:
                p.add(f"data.split.column: {m.path} has no column '{column}' to split by; available: "
                      f"{', '.join(m.columns)}; or use data.split={{ratios: [0.8, 0.1, 0.1], seed: 0}}")
                return {"train": np.arange(m.rows), "val": np.arange(0), "test": np.arange(0)}
            names = np.array(["" if c is None else str(c).strip().lower() for c in m.cells[column]])
            for row in np.flatnonzero(~np.isin(names, SPLITS)):
                cell = m.cells[column][row]
                what = "empty" if cell is None else f"{cell!r} is not a split"
                p.add(f"{m.at(int(row), column)}: {what}; every row needs train, val or test", group=("split", column))
            parts = {k: np.flatnonzero(names == k) for k in SPLITS}
        for k in SPLITS:
            if len(parts[k]) == 0 and not p:
                p.add(f"data.split: the {k} split of {m.path} has no row; every split needs at least one")
        return parts

    # ------------------------------------------------------------------ one handler per type
    # Each returns per-row data over the whole manifest: (values, present) with placeholders where absent.
    def _fitted(self, section: str, name: str, fit):
        """The state entry `section/name`: from the checkpoint if loaded, else `fit()` on the train split."""
        if self.loaded is not None:
            if name not in self.loaded[section]:
                raise UsageError(f"data=table: the checkpoint's data state has no {section} for '{name}'")
            value = self.loaded[section][name]
        else:
            value = fit()
        self.state[section][name] = value
        return value

    def _train_has_some(self, f: FieldSpec, present: np.ndarray, train: np.ndarray, column: str) -> bool:
        if self.loaded is None and not present[train].any():
            what = "label" if f.role == "targets" else "value"
            why = "a task needs labelled training rows" if f.role == "targets" else "nothing to fit on"
            self.problems.add(f"{f.key}: {self.m.path}, column '{column}': no row of the train split has a {what}; "
                              f"{why}")
            return False
        return True

    def _labels_to_codes(self, f: FieldSpec, labels: list, present: np.ndarray, classes: list) -> np.ndarray:
        index = {c: i for i, c in enumerate(classes)}
        codes = np.full(len(labels), -1, dtype=np.int64)
        origin = "the checkpoint's" if self.loaded is not None else "the train split's"
        for row in np.flatnonzero(present):
            code = index.get(labels[row])
            if code is None:
                present[row] = False
                if f.options["unknown"] == "error":
                    shown = ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
                    self.problems.add(f"{self.m.at(int(row), f.column)}: class {labels[row]!r} is not among "
                                      f"{origin} {len(classes)} classes ({shown}); fix the cell, or set "
                                      f"{f.key}.unknown=missing to read it as a missing label",
                                      group=("unknown", f.key))
            else:
                codes[row] = code
        return codes

    def _label_column(self, f: FieldSpec, train: np.ndarray):
        """(labels, present) of a label column, or None when it cannot be read or train has no label."""
        labels = _labels(self.m, f.column, self.problems)
        if labels is None:
            return None
        present = np.array([v is not None for v in labels])
        if not self._train_has_some(f, present, train, f.column):
            return None
        return labels, present

    def _boolean_label(self, f: FieldSpec, option: str, labels: Sequence):
        """The one label of the column that a YAML boolean option means (`positive: yes` reads as True), or
        None and a problem when no label or several labels mean it."""
        flag = f.options[option]
        matches = _sorted_labels(v for v in labels if v is not None and _means(flag, v))
        if len(matches) == 1:
            log.info(f"{f.key}.{option}: YAML read it as the boolean {str(flag).lower()}; it matches the label "
                     f"{matches[0]!r} of column '{f.column}'")
            return matches[0]
        if matches:
            found = f"several labels that mean {str(flag).lower()}: {', '.join(map(repr, matches))}"
        else:
            shown = _sorted_labels(v for v in labels if v is not None)
            found = (f"no label that means {str(flag).lower()} (labels: "
                     f"{', '.join(map(repr, shown[:6]))}{', ...' if len(shown) > 6 else ''})")
        example = matches[0] if matches else BOOLEAN_WORDS[flag][0]
        self.problems.add(f"{f.key}.{option}={str(flag).lower()}: YAML reads an unquoted yes / no / true / false / "
                          f"on / off as a boolean, and column '{f.column}' of {self.m.path} has {found}; quote the "
                          f"label as the column writes it, e.g. {option}: \"{example}\"")
        return None

    def _classification(self, f: FieldSpec, train: np.ndarray):
        if (column := self._label_column(f, train)) is None:
            return None
        labels, present = column
        classes = self._fitted("classes", f.name, lambda: _sorted_labels(labels[i] for i in train if present[i]))
        if self.loaded is None and len(classes) == 1:
            log.warning(f"{f.key}: every labelled row of the train split has the class {classes[0]!r} (column "
                        f"'{f.column}' of {self.m.path}); the task has a single class to learn, so it learns "
                        f"nothing useful; training continues")
        codes = self._labels_to_codes(f, labels, present, classes)
        return torch.from_numpy(codes), present

    def _binary(self, f: FieldSpec, train: np.ndarray):
        if (column := self._label_column(f, train)) is None:
            return None
        labels, present = column

        def fit():
            seen = {labels[i] for i in train if present[i]}
            positive = f.options["positive"]
            if isinstance(positive, bool):
                positive = self._boolean_label(f, "positive", labels)
                if positive is None:
                    return []
            if positive is not None:
                positive = _canon(positive)[1]
                seen.add(positive)
            ordered = _sorted_labels(seen)
            if len(ordered) > 2:
                self.problems.add(f"{f.key}: {self.m.path}, column '{f.column}' has {len(ordered)} values in the "
                                  f"train split ({', '.join(map(repr, ordered[:6]))}); a binary target has two; use "
                                  f"type: classification")
                return ordered[:2]
            if len(ordered) == 1:
                self.problems.add(f"{f.key}: {self.m.path}, column '{f.column}' has the single value "
                                  f"{ordered[0]!r} in the train split; set {f.key}.positive to the positive label")
                return ordered
            if positive is not None and ordered[1] != positive:
                ordered = ordered[::-1]
            return ordered  # [negative, positive]

        before = sum(self.problems.counts.values())
        classes = self._fitted("classes", f.name, fit)
        if sum(self.problems.counts.values()) > before:
            return None  # not two classes: every other row would only repeat it
        codes = self._labels_to_codes(f, labels, present, classes)
        target = torch.from_numpy(codes).float()
        return torch.where(torch.from_numpy(present), target, torch.full_like(target, float("nan"))), present

    def _multilabel(self, f: FieldSpec, train: np.ndarray):
        m, sep, none = self.m, f.options["sep"], f.options["none"]
        if isinstance(none, bool):
            none = self._boolean_label(f, "none", [c.strip() for c in m.cells[f.column] if isinstance(c, str)])
            if none is None:
                return None
        sets, present = [], np.zeros(m.rows, dtype=bool)
        for row, cell in enumerate(m.cells[f.column]):
            if cell is None:
                sets.append(None)
                continue
            if isinstance(cell, str):
                items = [] if none is not None and cell.strip() == none else [s for s in cell.split(sep) if s.strip()]
            elif isinstance(cell, list):
                items = cell
            else:
                items = [cell]
            canon = [_canon(x) for x in items]
            bad = [x for (kind, _), x in zip(canon, items) if kind not in ("number", "text", "boolean")]
            if bad:
                self.problems.add(f"{m.at(row, f.column)}: labels must be numbers or texts, got {bad[0]!r}",
                                  group=("kind", f.key))
            sets.append({v for kind, v in canon if kind in ("number", "text", "boolean")})
            present[row] = True
        kinds = {type(v).__name__ if not is_real(v) else "number" for s in sets if s for v in s}
        if len(kinds) > 1:
            self.problems.add(f"{m.path}, column '{f.column}': mixed types: labels of kinds "
                              f"{', '.join(sorted(kinds))}; a label column holds only numbers or only texts",
                              group=("mixed", f.key))
            return None
        if not self._train_has_some(f, present, train, f.column):
            return None
        labels = self._fitted("classes", f.name,
                              lambda: _sorted_labels(v for i in train if present[i] for v in sets[i]))
        index = {c: i for i, c in enumerate(labels)}
        target = torch.full((m.rows, len(labels)), float("nan"))
        origin = "the checkpoint's" if self.loaded is not None else "the train split's"
        for row in np.flatnonzero(present):
            unknown = [v for v in sets[row] if v not in index]
            if unknown:
                present[row] = False
                if f.options["unknown"] == "error":
                    self.problems.add(f"{m.at(int(row), f.column)}: label {unknown[0]!r} is not among {origin} "
                                      f"{len(labels)} labels; fix the cell, or set {f.key}.unknown=missing to read "
                                      f"it as a missing label", group=("unknown", f.key))
                continue
            target[row] = 0.0
            target[row, [index[v] for v in sets[row]]] = 1.0
        return target, present

    def _regression(self, f: FieldSpec, train: np.ndarray):
        cols = [_numbers(self.m, c, f.key, self.problems) for c in f.columns]
        values = np.stack([v for v, _ in cols], axis=1)
        present = np.all(np.stack([p for _, p in cols], axis=1), axis=1)
        if not self._train_has_some(f, present, train, f.column):
            return None
        if f.options["standardize"]:  # the train split's mean and std per column, kept in the checkpoint

            def fit():
                x = values[train][present[train]]
                std = x.std(axis=0)
                return {"mean": x.mean(axis=0).tolist(), "std": np.where(std > 1e-12, std, 1.0).tolist()}

            stats = self._fitted("targets", f.name, fit)
            values = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        target = torch.from_numpy(values).float()
        target[torch.from_numpy(~present)] = float("nan")
        return target, present

    def _tabular(self, f: FieldSpec, train: np.ndarray):
        m, o = self.m, f.options
        numeric = [_numbers(m, c, f.key, self.problems) for c in o["numeric"]]
        if numeric:
            values = np.stack([v for v, _ in numeric], axis=1)
            given = np.stack([p for _, p in numeric], axis=1)
            for j, column in enumerate(o["numeric"]):
                self._train_has_some(f, given[:, j], train, column)

            def fit():
                stats = {"mean": [], "std": []}
                for j in range(len(o["numeric"])):
                    x = values[train][given[train, j], j]
                    stats["mean"].append(float(x.mean()) if len(x) else 0.0)
                    std = float(x.std()) if len(x) else 1.0
                    stats["std"].append(std if std > 1e-12 else 1.0)
                return stats

            stats = self._fitted("numeric", f.name, fit)
            standard = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
            standard = np.where(given, standard, 0.0)  # empty cells read as the train mean
        else:
            standard, given = np.zeros((m.rows, 0)), np.zeros((m.rows, 0), dtype=bool)
        codes, cat_given = [], []
        labels_by_column = [_labels(m, c, self.problems) for c in o["categorical"]]
        if any(labels is None for labels in labels_by_column):
            return None
        for labels, column in zip(labels_by_column, o["categorical"]):
            present = np.array([v is not None for v in labels])
            cat_given.append(present)
            self._train_has_some(f, present, train, column)

        def fit_categories():
            return [_sorted_labels(labels[i] for i in train if labels[i] is not None) for labels in labels_by_column]

        categories = self._fitted("categories", f.name, fit_categories) if o["categorical"] else []
        for labels, cats in zip(labels_by_column, categories):
            index = {c: i + 1 for i, c in enumerate(cats)}  # 0 = empty or unseen in train
            codes.append(np.array([index.get(v, 0) for v in labels], dtype=np.float64))
        table = np.concatenate([standard, np.stack(codes, axis=1) if codes else np.zeros((m.rows, 0))], axis=1)
        present = np.concatenate([given, np.stack(cat_given, axis=1) if cat_given else np.zeros((m.rows, 0), bool)],
                                 axis=1).any(axis=1)
        self.cardinalities[f.name] = [len(c) for c in categories]
        return torch.from_numpy(table).float(), present

    def _text(self, f: FieldSpec, train: np.ndarray):
        o = f.options
        texts = ["" if c is None else str(c) for c in self.m.cells[f.column]]
        present = np.array([c is not None for c in self.m.cells[f.column]])
        if not self._train_has_some(f, present, train, f.column):
            return None

        def fit():
            tokenizer = Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"],
                                  lowercase=o["lowercase"])
            return tokenizer.fit([texts[i] for i in train if present[i]]).state_dict()

        tokenizer = Tokenizer.from_state(self._fitted("tokenizers", f.name, fit))
        ids = tokenizer.encode(texts)
        ids[torch.from_numpy(~present)] = 0
        self.vocab[f.name] = (tokenizer.vocab_size, tokenizer.max_len)
        return ids, present

    def _files(self, f: FieldSpec, train: np.ndarray, suffixes: Sequence[str] = ()):
        """Resolved paths ('' where empty) and presence; every non-empty cell must name an existing file, inside
        data.root unless data.allow_outside_root."""
        m, root = self.m, self.t.root
        paths = np.full(m.rows, "", dtype=object)
        present = np.zeros(m.rows, dtype=bool)
        top = os.path.abspath(root)
        for row, cell in enumerate(m.cells[f.column]):
            if cell is None:
                continue
            if not isinstance(cell, str):
                self.problems.add(f"{m.at(row, f.column)}: expected a file path, got {cell!r}", group=("path", f.key))
                continue
            path = Path(cell.strip()).expanduser()
            paths[row] = str(path if path.is_absolute() else root / path)
            present[row] = True
            if not self.t.allow_outside_root and not _inside(os.path.abspath(paths[row]), top):
                self._outside(row, f, cell, top, "")
        exists, links = _existing(paths[present])
        missing = np.flatnonzero(present)[~exists]
        for row in missing:
            self.problems.add(f"{m.at(int(row), f.column)}: file not found: {paths[row]}", group=("missing", f.key))
        if not self.t.allow_outside_root:  # a path inside the root may still lead out through a symlink
            real_top, real_folders = os.path.realpath(top), {}
            for row, link in zip(np.flatnonzero(present)[exists], links[exists]):
                full = os.path.abspath(paths[row])
                if not _inside(full, top):
                    continue  # reported above
                folder, name = os.path.split(full)
                if folder not in real_folders:
                    real_folders[folder] = os.path.realpath(folder)
                real = os.path.realpath(full) if link else os.path.join(real_folders[folder], name)
                if not _inside(real, real_top):
                    self._outside(int(row), f, m.cells[f.column][row], top, f" through a symbolic link to {real}")
        if len(missing) and len(missing) == present.sum():
            self.problems.add(f"{f.key}: none of the {len(missing)} files of column '{f.column}' exists; relative "
                              f"paths start at data.root (null: the manifest's folder, here {root.resolve()})")
        if suffixes:
            for row in np.flatnonzero(present):
                if Path(paths[row]).suffix.lower() not in suffixes:
                    self.problems.add(f"{m.at(int(row), f.column)}: {paths[row]}: a {f.type} file must end with "
                                      f"{' or '.join(suffixes)}", group=("suffix", f.key))
        self._train_has_some(f, present, train, f.column)
        return paths.astype(str), present

    def _outside(self, row: int, f: FieldSpec, cell: str, top: str, how: str) -> None:
        self.problems.add(f"{self.m.at(row, f.column)}: {cell!r} leads{how} outside the data root {top}; keep the "
                          f"files under data.root (null: the manifest's folder), set data.root to a folder that "
                          f"holds them all, or set data.allow_outside_root=true to read files anywhere",
                          group=("outside", f.key))

    def _image(self, f: FieldSpec, train: np.ndarray):
        paths, present = self._files(f, train)
        if f.options["size"] is None and not self.problems:
            def first_size():
                i = next(i for i in train if present[i])
                try:
                    return list(media.image_size(paths[i]))
                except media.MediaError as exc:
                    self.problems.add(f"{self.m.at(int(i), f.column)}: cannot read the image {paths[i]}: {exc}")
                    return [1, 1]
            self._fitted("sizes", f.name, first_size)
        return paths, present

    def _audio(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train, media.AUDIO_SUFFIXES)

    def _segmentation(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train)

    def _depth(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train, media.DEPTH_SUFFIXES)

    # ------------------------------------------------------------------ assembling the splits
    def _size(self, f: FieldSpec) -> tuple[int, int]:
        if f.options["size"] is not None:
            return tuple(f.options["size"])
        if f.type == "image":
            return tuple(self.state["sizes"][f.name])
        images = [g for g in self.t.inputs if g.type == "image"]
        if len(images) != 1:
            message = (f"{f.key}.size: give [H, W]; it defaults to the image input's size only when the data "
                       f"has exactly one image input (it has {len(images)})")
            raise ConfigError([message])
        return self._size(images[0])

    def _reader(self, f: FieldSpec) -> Reader:
        o = f.options
        if f.type == "audio":
            return Reader("audio", sample_rate=o["sample_rate"], num_samples=o["num_samples"])
        size = self._size(f)
        if f.type == "image":
            return Reader("image", size=size, channels=o["channels"])
        if f.type == "segmentation":
            return Reader("segmentation", size=size, num_classes=o["num_classes"], ignore_index=o["ignore_index"])
        return Reader("depth", size=size, png_scale=float(o["png_scale"]))

    def _assemble(self, fields: list[FieldSpec], values: dict) -> _Prepared:
        m, t = self.m, self.t
        modalities, targets, normalise, readers = {}, {}, {}, {}
        for f in fields:
            if f.type in FILE_TYPES:
                readers[f.name if f.role == "inputs" else f"target:{f.name}"] = self._reader(f)
        for f in t.inputs:
            o = f.options
            if f.type == "image":
                r = readers[f.name]
                modalities[f.name] = ModalityInfo("image", r.shape, {"in_channels": r.channels, "input_size": r.size})
                mean = o["mean"] if o["mean"] is not None else [0.0]
                std = o["std"] if o["std"] is not None else [1.0]
                normalise[f.name] = (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                                     torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
            elif f.type == "text":
                vocab_size, max_len = self.vocab[f.name]
                modalities[f.name] = ModalityInfo("text", (max_len,), {"vocab_size": vocab_size, "max_len": max_len})
            elif f.type == "audio":
                modalities[f.name] = ModalityInfo("audio", (o["num_samples"],),
                                                  {"sample_rate": o["sample_rate"], "num_samples": o["num_samples"]})
            else:
                cards = self.cardinalities[f.name]
                modalities[f.name] = ModalityInfo("tabular", (len(o["numeric"]) + len(cards),),
                                                  {"num_numeric": len(o["numeric"]), "cardinalities": cards})
        for f in t.targets:
            o = f.options
            if f.type in ("classification", "binary", "multilabel"):
                n = len(self.state["classes"][f.name])
                targets[f.name] = {"classification": TargetInfo("classification", num_classes=n),
                                   "binary": TargetInfo("binary", dim=1),
                                   "multilabel": TargetInfo("multilabel", dim=n)}[f.type]
            elif f.type == "regression":
                targets[f.name] = TargetInfo("regression", dim=len(f.columns))
            elif f.type == "segmentation":
                targets[f.name] = TargetInfo("segmentation", num_classes=o["num_classes"])
            else:
                targets[f.name] = TargetInfo("depth", dim=1)

        splits = {}
        for split, rows in self.splits.items():
            tensors = {"inputs": {}, "targets": {}, "label_mask": {}, "modality_mask": {}}
            files = []
            idx = torch.from_numpy(rows)
            for f in fields:
                key = f.name if f.role == "inputs" else f"target:{f.name}"
                data, present = values[key]
                present = torch.from_numpy(present[rows])
                mask_group = "modality_mask" if f.role == "inputs" else "label_mask"
                if not bool(present.all()):
                    tensors[mask_group][f.name] = present
                if key in readers:
                    files.append(FileColumn(f.role, f.name, readers[key], data[rows], rows,
                                            (m.path, m.numbers, m.lines, f.column)))
                else:
                    tensors[f.role][f.name] = data.index_select(0, idx)
            tensors = {g: d for g, d in tensors.items() if d or g in ("inputs", "targets")}
            augment = t.augment if split == "train" and t.augment else None
            splits[split] = TableDataset(tensors, files, len(rows), normalise, augment)
        state = self.state if self.loaded is None else self.loaded
        return _Prepared(DataSpec(modalities, targets), splits, state)

    def _decode_everything(self, prepared: _Prepared) -> None:
        """Decode every file once (data.num_workers processes); problems are collected; kept if cache."""
        t = self.t
        columns = [c for ds in prepared.splits.values() for c in ds.files]
        total = sum(int((c.paths != "").sum()) for c in columns)
        log.info(f"data=table: decoding {total} files ({'cache' if t.cache else 'validate=full'})")
        for column in columns:
            job = _DecodeAll(column)
            store = column.reader.blank(len(column.paths)).to(column.reader.stored_dtype) if t.cache else None
            loader = DataLoader(job, batch_size=64, collate_fn=_passthrough, num_workers=t.num_workers)
            for items in loader:
                for i, tensor, problem in items:
                    if problem is not None:
                        self.problems.add(problem, group=("decode", column.role, column.name))
                    elif store is not None:
                        store[i] = tensor.to(store.dtype)
            if store is not None:
                column.cache = store


def _existing(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of `paths` exist as files, and which of those are symbolic links: one directory listing per folder
    instead of a stat per file."""
    listing: dict[str, dict[str, bool] | None] = {}
    exists, links = np.zeros(len(paths), dtype=bool), np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listing:
            try:
                with os.scandir(folder or ".") as entries:
                    listing[folder] = {e.name: e.is_symlink() for e in entries if not e.is_dir()}
            except OSError:
                listing[folder] = None
        names = listing[folder]
        exists[i] = names is not None and name in names
        links[i] = exists[i] and names[name]
    return exists, links


def _inside(path: str, folder: str) -> bool:
    """Whether the absolute, normalised `path` is `folder` or lies under it."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False
