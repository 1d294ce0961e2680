"""What `data=table` fitted on the train split, read back from a checkpoint or an export's data_state.json: checked
before anything reads data with it. A standard deviation of 0 would scale a value by 1e30, a NaN mean would
make every input NaN, a category list that is not a list of labels would crash or code every cell as unseen;
none of that is an error of the data being read, so the state is refused up front, each problem named by
its place in the state (`numeric.stats.std[1]=0.0`)."""

from __future__ import annotations

import math

from mtlrun.checks import is_int, is_real
from mtlrun.data.table.fields.base import STATE_SECTIONS
from mtlrun.data.table.fields.binary import BinaryField
from mtlrun.data.table.fields.classification import ClassificationField
from mtlrun.data.table.fields.image import ImageField
from mtlrun.data.table.fields.multilabel import MultilabelField
from mtlrun.data.table.fields.regression import RegressionField
from mtlrun.data.table.fields.tabular import TabularField

LABEL_TYPES = (str, int, float, bool)  # what a manifest cell reads as (mtlrun.data.table.cells)


def state_problems(state, fields=()) -> list[str]:
    """Every problem of a table data state, one line each: its sections, then the entry of each of `fields` (the
    declared inputs and targets) of a built-in type. A registered field type keeps what it likes in its entries;
    those are its own to check."""
    if not isinstance(state, dict) or not set(STATE_SECTIONS) - {"targets"} <= set(state) <= set(STATE_SECTIONS):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        return [f"has keys {keys}, expected {list(STATE_SECTIONS)}; it was not written by data=table"]
    problems = [f"{section}={state[section]!r}: must be a mapping of field names" for section in state
                if not isinstance(state[section], dict)]
    if problems:
        return problems
    for f in fields:
        for section, check in _kept_by(f):
            if f.name in state.get(section, {}):  # one that is missing: the field says so when it reads
                problems += check(f"{section}.{f.name}", state[section][f.name])
    return problems


def _kept_by(f) -> list[tuple[str, object]]:
    """(section, check of its entry) for what a field of a built-in type fits on the train split."""
    kind = type(f)
    if kind in (ClassificationField, BinaryField, MultilabelField):
        return [("classes", _label_list_problems)]
    if kind is TabularField:
        kept = []
        if f.options["categorical"]:
            kept.append(("categories", lambda key, v: _category_problems(key, v, len(f.options["categorical"]))))
        if f.options["numeric"]:
            kept.append(("numeric", lambda key, v: _statistics_problems(key, v, len(f.options["numeric"]))))
        return kept
    if kind is RegressionField and f.options.get("standardize"):
        return [("targets", lambda key, v: _statistics_problems(key, v, len(f.columns)))]
    if kind is ImageField and f.options.get("size") is None:
        return [("sizes", _size_problems)]
    return []


def _size_problems(key: str, size) -> list[str]:
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(s) and s >= 1 for s in size):
        return []
    return [f"{key}={size!r}: must be [height, width], integers >= 1"]


def _category_problems(key: str, lists, columns: int) -> list[str]:
    if not isinstance(lists, (list, tuple)):
        return [f"{key}={lists!r}: must be one list of categories per categorical column"]
    problems = [p for j, labels in enumerate(lists) for p in _label_list_problems(f"{key}[{j}]", labels)]
    if len(lists) != columns:
        problems.append(f"{key}: {len(lists)} category list(s) for {columns} categorical column(s)")
    return problems


def _label_list_problems(key: str, labels) -> list[str]:
    if not isinstance(labels, (list, tuple)) or not all(isinstance(v, LABEL_TYPES) for v in labels):
        return [f"{key}={labels!r}: must be a list of labels (texts or numbers)"]
    if any(isinstance(v, float) and not math.isfinite(v) for v in labels):
        return [f"{key}={labels!r}: a label is NaN or infinite"]
    if len({(type(v).__name__, v) for v in labels}) != len(labels):
        return [f"{key}={labels!r}: a label is listed twice"]
    return []


def _statistics_problems(key: str, stats, columns: int) -> list[str]:
    """{"mean": [...], "std": [...]}: one finite mean and one finite standard deviation > 0 per column (numpy
    would broadcast a single mean over every column)."""
    if not (isinstance(stats, dict) and set(stats) == {"mean", "std"}
            and all(isinstance(stats[k], (list, tuple)) for k in ("mean", "std"))):
        return [f"{key}={stats!r}: must be {{mean: [numbers], std: [numbers]}}"]
    problems = [f"{key}.mean[{i}]={v!r}: a fitted mean must be a finite number"
                for i, v in enumerate(stats["mean"]) if not (is_real(v) and math.isfinite(v))]
    problems += [f"{key}.std[{i}]={v!r}: a fitted standard deviation must be a finite number > 0"
                 for i, v in enumerate(stats["std"]) if not (is_real(v) and math.isfinite(v) and v > 0)]
    problems += [f"{key}: {len(stats[k])} {k}(s) for {columns} column(s)" for k in ("mean", "std")
                 if len(stats[k]) != columns]
    return problems
