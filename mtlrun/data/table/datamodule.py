"""`Table`, the DataModule of `data=table`: checks its whole config at construction (every problem at once),
then reads the manifest on first use and keeps what was fitted on the train split as its checkpoint state."""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mtlrun.data.base import DataModule, DataSpec
from mtlrun.data.table.augment import parse_augment
from mtlrun.data.table.assemble import Prepared, assemble, decode_everything, slot
from mtlrun.data.table.fields import parse_fields
from mtlrun.data.table.fields.base import Reading, plain
from mtlrun.data.table.manifest import MAX_SHOWN, SUFFIXES, Manifest, read_manifest
from mtlrun.data.table.missing import parse_na_values
from mtlrun.data.table.splits import assign_splits, parse_split
from mtlrun.data.table.state import state_problems
from mtlrun.errors import ConfigError, Problems, UsageError

log = logging.getLogger("mtlrun")
VALIDATE = ("files", "full")


class Table(DataModule):
    """Your own data from a manifest; see the package docstring (mtlrun.data.table) and configs/data/table.yaml."""

    name = "table"

    def __init__(self, path: str | None = None, root: str | None = None, inputs=None, targets=None, split=None,
                 validate: str = "files", cache: bool = False, augment=None, encoding: str = "utf-8",
                 na_values=(), allow_outside_root: bool = False, **loader):
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
        self.inputs = parse_fields("inputs", inputs, problems)
        self.targets = parse_fields("targets", targets, problems)
        if not self.inputs and not plain(inputs):
            problems.append("data.inputs: declare at least one input, e.g. {image: {type: image, column: path}}")
        if not self.targets and not plain(targets):
            problems.append("data.targets: declare at least one target, e.g. {label: {type: classification, "
                            "column: label}}")
        self.split = parse_split(split, problems)
        if validate not in VALIDATE:
            problems.append(f"data.validate={validate!r}: valid: files (cells parsed, every file exists), full "
                            f"(also decodes every file)")
        if not isinstance(cache, bool):
            problems.append(f"data.cache={cache!r}: must be true or false")
        if not isinstance(allow_outside_root, bool):
            problems.append(f"data.allow_outside_root={allow_outside_root!r}: must be true or false")
        if not is_text_encoding(encoding):
            problems.append(f"data.encoding={encoding!r}: not a text encoding Python knows; e.g. utf-8, latin-1, "
                            f"cp1252, utf-16")
        self.markers = parse_na_values(plain(na_values), problems)
        self.augment = parse_augment(augment, problems)
        if self.augment and not any(f.resample for f in self.inputs):
            problems.append("data.augment: flips and crops act on images; this data has no image input")
        boxes = [f.name for f in self.targets if f.type == "detection"]
        if self.augment and boxes:  # its flips and crops resample maps; boxes are not maps
            problems.append(f"data.augment: does not move the boxes of the detection target(s) {', '.join(boxes)}; "
                            f"use data.transforms (torchvision.transforms.v2, which moves boxes with the image)")
        if problems:
            raise ConfigError(problems)
        self.path = str(Path(path).expanduser())
        self.root = Path(root).expanduser() if root else Path(self.path).parent
        self.validate, self.cache = validate, cache
        self.encoding, self.allow_outside_root = encoding, allow_outside_root
        self._loaded: dict | None = None
        self._prepared: Prepared | None = None
        self._unlabelled = False

    # ------------------------------------------------------------------ DataModule interface
    @property
    def full_spec(self) -> DataSpec:
        return self._prepare().spec

    def build(self) -> dict[str, Dataset]:
        return dict(self._prepare().splits)

    def state_dict(self) -> dict:
        return self._prepare().state

    def class_names(self, task: str) -> list | None:
        return self._prepare().state["classes"].get(task)

    def tagged_words(self, split: str):
        """The words of the text input the (first) `type: tags` target aligns with; None without one."""
        tags = [f for f in self.targets if f.type == "tags"]
        if not tags:
            return None
        prepared = self._prepare()
        return tags[0].words(self.inputs, prepared.state, prepared.manifest.cells, prepared.rows[split])

    def target_scale(self, task: str) -> tuple[list[float], list[float]] | None:
        stats = self._prepare().state["targets"].get(task)
        return None if stats is None else (list(stats["mean"]), list(stats["std"]))

    def read_unlabelled(self) -> None:
        """Read the manifest as new data to predict (`mtlrun predict data.path=...`): every row is the test split,
        read with the loaded checkpoint's fitted state; no split column, and target columns need not exist (they
        are not read). Call after load_state_dict and before anything reads the data."""
        if self._loaded is None:
            raise UsageError("data=table: predicting reads new rows with the checkpoint's fitted preprocessing; "
                             "load the checkpoint's data state first")
        self._unlabelled, self._prepared = True, None

    def sample_ids(self, split: str, column: str | None = None) -> list:
        """One id per sample of `split`, in order: the cells of `column` (null: the manifest's `id` column if
        it has one), else the row's index in the manifest (from 0)."""
        prepared = self._prepare()
        m, rows = prepared.manifest, prepared.rows[split]
        if column is not None and column not in m.cells:
            raise UsageError(f"id_column={column}: {m.path} has no such column; available: {', '.join(m.columns)}")
        column = column or ("id" if "id" in m.cells else None)
        if column is None:
            return [int(r) for r in rows]
        return [m.cells[column][int(r)] for r in rows]

    @classmethod
    def state_problems(cls, state: dict, config: dict | None = None) -> list[str]:
        if not isinstance(config, dict):
            return state_problems(state)
        declared = [*parse_fields("inputs", config.get("inputs"), []),  # their own problems: the data module
                    *parse_fields("targets", config.get("targets"), [])]  # reports them when it is built
        return state_problems(state, declared)

    def load_state_dict(self, state: dict) -> None:
        problems = state_problems(state, [*self.inputs, *self.targets])
        if problems:
            raise UsageError(f"data=table: the checkpoint's data state: {'; '.join(problems)}")
        if "targets" not in state:
            state = {**state, "targets": {}}  # written before regression targets could be standardised
        self._loaded = state
        self._prepared = None

    # ------------------------------------------------------------------ reading and validation
    def _prepare(self) -> Prepared:
        if self._prepared is None:
            self._prepared = self._read()
        return self._prepared

    def _read(self) -> Prepared:
        """Read the manifest once, validate every cell and file, fit on the train split (or take what a loaded
        checkpoint fitted), and build the splits; every problem found is reported at once."""
        problems = Problems(max_shown=MAX_SHOWN)
        m = read_manifest(self.path, problems, self.encoding, self.markers)
        if m.rows == 0:
            problems.add(f"{self.path}: the manifest has no data rows")
            problems.raise_if_any()
        reading = Reading(m, problems, inputs=self.inputs, root=self.root, allow_outside_root=self.allow_outside_root,
                          loaded=self._loaded)
        if self._unlabelled:
            return self._read_unlabelled(reading)
        fields = [f for f in [*self.inputs, *self.targets] if f.check_columns(m, problems)]
        splits = assign_splits(m, self.split, problems)
        values = {slot(f): f.read(reading, splits["train"]) for f in fields}
        problems.raise_if_any()
        prepared = assemble(reading, fields, values, splits, self.targets, self.augment)
        if self.validate == "full" or self.cache:
            decode_everything(prepared, problems, self.cache, self.num_workers)
            problems.raise_if_any()
        return prepared

    def _read_unlabelled(self, reading: Reading) -> Prepared:
        """The inputs of every row as the test split, read exactly as training read its rows (the same checks and
        messages), with the checkpoint's fitted state; the targets' class lists come from that state too."""
        m, problems = reading.m, reading.problems
        reading.state = copy.deepcopy(self._loaded)  # what the spec tells the model about targets not read
        read = [f for f in self.inputs if self.modalities is None or f.name in self.modalities]  # the model's
        fields = [f for f in read if f.check_columns(m, problems)]
        everything = np.arange(m.rows)
        values = {slot(f): f.read(reading, everything) for f in fields}
        problems.raise_if_any()
        warn_rows_without_input(m, [values[slot(f)][1] for f in fields])
        splits = {"train": everything[:0], "val": everything[:0], "test": everything}
        prepared = assemble(reading, fields, values, splits, self.targets, None)
        if self.validate == "full" or self.cache:
            decode_everything(prepared, problems, self.cache, self.num_workers)
            problems.raise_if_any()
        return prepared


def warn_rows_without_input(m: Manifest, present: list[np.ndarray], shown: int = 5) -> list[int]:
    """The data rows (from 1) whose every input read is empty, in a warning: the model still predicts them
    (from no input at all), and a prediction from nothing is better flagged than taken at face value."""
    if not present:
        return []
    empty = [int(m.numbers[row]) for row in np.flatnonzero(~np.any(np.stack(present), axis=0))]
    if empty:
        rows = ", ".join(map(str, empty[:shown])) + (", ..." if len(empty) > shown else "")
        log.warning(f"{m.path}: {len(empty)} of {m.rows} rows have every input cell empty (row{'s' * (len(empty) > 1)} "
                    f"{rows}): they are predicted from no input at all, a guess that says nothing about them")
    return empty


def is_text_encoding(name) -> bool:
    try:
        io.TextIOWrapper(io.BytesIO(), encoding=name)  # what open() takes: no hex or base64 codecs
    except (LookupError, TypeError):
        return False
    return isinstance(name, str)  # None would mean the locale's encoding
