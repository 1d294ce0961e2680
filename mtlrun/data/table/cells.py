"""What the cells of a manifest column mean: labels, numbers, and YAML booleans standing for labels."""

from __future__ import annotations

import logging
import math

import numpy as np

from mtlrun.checks import is_real
from mtlrun.data.table.manifest import Manifest, Problems, is_empty
from mtlrun.data.table.missing import COMMON_MARKERS, marker_hint, na_values_override

log = logging.getLogger("mtlrun")

# What a YAML boolean in an option that names a label (`positive: yes` is read as True) stands for.
BOOLEAN_WORDS = {True: ("yes", "y", "true", "on", "1"), False: ("no", "n", "false", "off", "0")}


def canon(value) -> tuple[str | None, object]:
    """(kind, canonical value) of a cell: kind is number | text | boolean | list | object (None if empty).

    Text that reads as a finite number is a number, so "1" and "1.0" in a CSV are the same label, and a
    label column of a CSV and of a JSON Lines file give the same classes."""
    if is_empty(value):
        return None, None
    if isinstance(value, bool):
        return "boolean", value
    if isinstance(value, int):  # as it is: an integer of a JSON Lines file may exceed float's range
        return "number", value
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


def reads_as(flag: bool, label) -> bool:
    """Whether a label (a canonical cell value) reads as the boolean `flag`: yes / True / 1 / y for True."""
    if isinstance(label, bool):
        return label == flag
    if is_real(label):
        return label == int(flag)
    return isinstance(label, str) and label.strip().lower() in BOOLEAN_WORDS[flag]


def label_column(manifest: Manifest, column: str, problems: Problems) -> list | None:
    """Canonical values of a label or category column (None = empty cell), or None (and problems) when a
    cell is not a single number / text / boolean, or the column mixes those kinds."""
    values, examples, counts, bad = [], {}, {}, False
    for row, cell in enumerate(manifest.cells[column]):
        kind, value = canon(cell)
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
    if not bad:
        _warn_markers_read_as_labels(manifest, column, values)
    return None if bad else values


def _warn_markers_read_as_labels(manifest: Manifest, column: str, values: list) -> None:
    """A label such as 'NA' is kept (it may be a real class), but R and pandas would read it as missing: say so."""
    markers = sorted({v for v in values if isinstance(v, str) and v in COMMON_MARKERS})
    for text in markers:
        count = sum(v == text for v in values)
        log.warning(f"{manifest.path}, column '{column}': {count} cell(s) {text!r} are read as a label, but {text!r} "
                    f"commonly marks a missing value (pandas reads it as one): if it does here, set "
                    f"{na_values_override(text)} to read them as empty cells")


def sorted_labels(labels) -> list:
    """Deterministic order: numbers numerically, texts alphabetically, false before true."""
    return sorted(set(labels), key=lambda v: (type(v).__name__ if not is_real(v) else "", v))


def number_column(manifest: Manifest, column: str, key: str, problems: Problems) -> tuple[np.ndarray, np.ndarray]:
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
        except OverflowError:  # an integer of a JSON Lines file past float's range
            number = math.inf
        except ValueError:
            problems.add(f"{manifest.at(row, column)}: not a number: {cell!r} ({key} reads numbers)"
                         f"{marker_hint(cell)}", group=("number", column))
            continue
        if not math.isfinite(number):
            problems.add(f"{manifest.at(row, column)}: {cell!r} is not a finite number; leave the cell empty "
                         f"for a missing value{marker_hint(cell)}", group=("number", column))
            continue
        values[row], present[row] = number, True
    return values, present
