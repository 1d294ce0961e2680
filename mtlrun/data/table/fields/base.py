"""`Field`, what every input and target type of `data=table` is; `Reading`, what it reads through; `FileReader`,
what decodes one file of a file type; and the helpers the option checks share.

A field type is one class: its options with their defaults, their checks, how it reads its column(s) over
the whole manifest (fitting what it needs on the train split, kept in the checkpoint's data state), and what
it tells the model (a ModalityInfo or TargetInfo). A type whose cells name files gives a FileReader too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from mtlrun.checks import is_int
from mtlrun.data.base import ModalityInfo, TargetInfo
from mtlrun.data.table.manifest import Manifest, Problems
from mtlrun.errors import UsageError

REQUIRED = object()  # an option without a default
# The checkpoint's data state: one section per kind of thing fitted on the train split, each keyed by the
# field's name. A field type stores what it fits in one of these (Reading.fitted), so the state keeps its shape.
STATE_SECTIONS = ("classes", "categories", "numeric", "tokenizers", "sizes", "targets")


def plain(value):
    """An OmegaConf node as plain dicts and lists; anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def is_column(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def is_size(value) -> bool:
    """null or [H, W] of ints >= 1."""
    return value is None or (isinstance(value, (list, tuple)) and len(value) == 2
                             and all(is_int(s) and s >= 1 for s in value))


class Field:
    """One declared input (role `inputs`) or target (role `targets`) of one type, its options filled in.

    A subclass sets `defaults` (option -> default, REQUIRED: none; `type` is implied) and implements
    `check_options`, `read` and `info`; it is registered under its `type:` name in fields/__init__.py.
    """

    defaults: dict = {}
    column_options: tuple[str, ...] = ("column",)  # the options that name manifest columns, in `columns` order
    # How a train-time flip or crop resamples it: "bilinear" (images), "nearest" (class ids, depth), None: never.
    resample: str | None = None

    def __init__(self, role: str, name: str, type: str, options: dict):
        self.role, self.name, self.type, self.options = role, name, type, options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key}, {self.options})"

    @property
    def key(self) -> str:
        return f"data.{self.role}.{self.name}"

    @property
    def columns(self) -> list[str]:
        out = []
        for option in self.column_options:
            value = self.options.get(option)
            if value is not None:
                out += [value] if isinstance(value, str) else list(value)
        return out

    @property
    def column(self) -> str:
        return self.columns[0]

    def check_columns(self, m: Manifest, problems: Problems) -> bool:
        """Whether the manifest has every column it names (each one it lacks is a problem)."""
        missing = [c for c in self.columns if c not in m.cells]
        for c in missing:
            option = next(o for o in self.column_options if (v := self.options.get(o)) == c
                          or (isinstance(v, (list, tuple)) and c in v))
            problems.add(f"{self.key}.{option}: {m.path} has no column '{c}'; available: {', '.join(m.columns)}")
        return not missing

    # ------------------------------------------------------------------ options
    def check(self, problems: list[str]) -> None:
        """Every problem of the options' values, as `data.<role>.<name>.<option>=<value>: what is valid`."""
        if self.options.get("column") is not None:
            self.need(problems, is_column(self.options["column"]), "column", "must be a column name")
        self.check_options(problems)

    def check_options(self, problems: list[str]) -> None:
        """The type's own checks (the `column` option is checked already)."""

    def need(self, problems: list[str], condition: bool, option: str, what: str) -> None:
        if not condition:
            problems.append(f"{self.key}.{option}={self.options[option]!r}: {what}")

    # ------------------------------------------------------------------ reading
    def read(self, reading: Reading, train: np.ndarray) -> tuple[object, np.ndarray] | None:
        """(values, present) over every manifest row, or None when its problems make it unreadable.

        values: a tensor with one row per manifest row (a placeholder where absent), or for a file type the
        resolved paths ('' where empty); present: bool [rows]. Whatever is fitted on the `train` rows goes
        through `reading.fitted`, so that it comes from the checkpoint when one is loaded."""
        raise NotImplementedError

    def info(self, reading: Reading) -> ModalityInfo | TargetInfo:
        """What the model is told about it, once every field is read."""
        raise NotImplementedError

    def reader(self, reading: Reading) -> FileReader | None:
        """The decoder of one file, for a type whose cells name files; None: its values are the tensor."""
        return None

    def image_size(self, reading: Reading) -> tuple[int, int] | None:
        """(H, W) of the images it gives, the default size of dense targets; None: it gives no image."""
        return None


class Reading:
    """What the fields read through, once per reading of the manifest: its cells, the problems found so far, and
    what is fitted on the train split, or taken from a checkpoint's data state when one is loaded."""

    def __init__(self, manifest: Manifest, problems: Problems, *, inputs: list[Field], root: Path,
                 allow_outside_root: bool, loaded: dict | None):
        self.m, self.problems = manifest, problems
        self.inputs = inputs  # every declared input: a dense target's size defaults to the image input's
        self.root, self.allow_outside_root = root, allow_outside_root
        self.loaded = loaded
        self.state: dict[str, dict] = {section: {} for section in STATE_SECTIONS}

    @property
    def origin(self) -> str:
        """Where the class lists come from, as messages name it."""
        return "the checkpoint's" if self.loaded is not None else "the train split's"

    def fitted(self, section: str, name: str, fit):
        """The state entry `section/name`: from the checkpoint if loaded, else `fit()` on the train split."""
        if self.loaded is not None:
            if name not in self.loaded[section]:
                raise UsageError(f"data=table: the checkpoint's data state has no {section} for '{name}'")
            value = self.loaded[section][name]
        else:
            value = fit()
        self.state[section][name] = value
        return value

    def train_has_some(self, f: Field, present: np.ndarray, train: np.ndarray, column: str) -> bool:
        """Whether a train row has a value in `column` (always, when fitted values come from a checkpoint)."""
        if self.loaded is None and not present[train].any():
            what = "label" if f.role == "targets" else "value"
            why = "a task needs labelled training rows" if f.role == "targets" else "nothing to fit on"
            self.problems.add(f"{f.key}: {self.m.path}, column '{column}': no row of the train split has a {what}; "
                              f"{why}")
            return False
        return True


@dataclass(frozen=True)
class FileReader:
    """Decodes one file of a column into its per-sample layout (mtlrun.data.media). Plain data, so that it
    pickles into DataLoader workers; a subclass gives `__call__`, `shape` and, if not float32, `stored_dtype`."""

    type: str  # the field type, named in messages
    resample: str | None  # Field.resample

    stored_dtype: ClassVar[torch.dtype] = torch.float32  # what the cache keeps

    def __call__(self, path: str) -> torch.Tensor:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def blank(self, n: int) -> torch.Tensor:
        """Placeholder rows for empty cells: zeros for inputs, -1 / NaN for targets (never a label)."""
        return torch.zeros((n, *self.shape), dtype=self.stored_dtype)

    def to_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded or cached rows [B, ...] in the layout of a batch, before augmentation."""
        return x

    def finish(self, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """The batch after augmentation; `present`: its modality or label mask, None when every row has it."""
        return x
