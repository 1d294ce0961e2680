"""`data.na_values`: the cell texts (and numbers) read as empty cells, and what a refused cell that looks like
a missing-value marker suggests.

Only empty cells are missing by default, so a label or a category that happens to be called "NA" or "None"
keeps its meaning; a file written by R or pandas (`NA`, `NaN`, `null`, ...) is read with e.g.
`data.na_values=[NA]`, and a cell refused or taken as a label because it holds such a marker says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from mtlrun.checks import is_real

log = logging.getLogger("mtlrun")

# What pandas' read_csv reads as missing besides an empty cell: a cell holding one is probably a missing value.
COMMON_MARKERS = frozenset({"NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "#N/A",
                            "#N/A N/A", "#NA", "<NA>", "-1.#IND", "1.#IND", "-1.#QNAN", "1.#QNAN"})


@dataclass(frozen=True)
class Markers:
    """Cell texts (compared without surrounding spaces, case-sensitive as in pandas) and numbers (compared as
    numbers, so -999 matches "-999.0") read as empty cells."""

    texts: frozenset[str] = field(default_factory=frozenset)
    numbers: frozenset[float] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.texts or self.numbers)

    def matches(self, cell) -> bool:
        if isinstance(cell, str):
            text = cell.strip()
            if text in self.texts:
                return True
            if not self.numbers:
                return False
            try:
                cell = float(text)
            except ValueError:
                return False
        if not is_real(cell):
            return False
        try:
            number = float(cell)
        except OverflowError:  # an integer past float's range (JSON Lines): no marker is that large
            return False
        return number in self.numbers


def parse_na_values(value, problems: list[str]) -> Markers:
    """data.na_values (a plain list) as Markers; every item that is not a text or a number is a problem."""
    if value is None:
        return Markers()
    if isinstance(value, str):  # data.na_values=NA: one marker
        value = [value]
    if not isinstance(value, (list, tuple)):
        problems.append(f"data.na_values={value!r}: a list of the cell texts that mean a missing value, e.g. "
                        f"data.na_values=[NA] for a file written by R (an empty cell is always missing)")
        return Markers()
    texts, numbers = set(), set()
    for i, item in enumerate(value):
        if isinstance(item, str):
            texts.add(item.strip())
        elif is_real(item) and math.isfinite(item):
            numbers.add(float(item))
        else:  # Hydra and YAML read an unquoted null / NaN / yes as null, a float, a boolean
            shown = _as_written(item)
            problems.append(f"data.na_values[{i}]={shown}: not a cell text; quote it as the cells write it, e.g. "
                            f"'data.na_values=[NA,\"{shown}\"]'")
    return Markers(frozenset(texts - {""}), frozenset(numbers))


def _as_written(item) -> str:
    """How the user probably wrote a value that YAML or Hydra did not read as text."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return str(item).lower()
    if isinstance(item, float) and math.isnan(item):
        return "NaN"
    return str(item)


def blank_markers(cells: dict[str, list], markers: Markers, path: str) -> None:
    """Every cell that matches a marker becomes None (empty), in place; how many of each is logged."""
    if not markers:
        return
    found: dict[str, int] = {}
    for column in cells.values():
        for row, cell in enumerate(column):
            if cell is not None and markers.matches(cell):
                found[str(cell).strip()] = found.get(str(cell).strip(), 0) + 1
                column[row] = None
    if found:
        counts = ", ".join(f"{text!r} x{n}" for text, n in sorted(found.items(), key=lambda kv: -kv[1]))
        log.info(f"data.na_values: {sum(found.values())} cells of {path} read as empty ({counts})")


def marker_hint(cell) -> str:
    """`; if 'NA' marks a missing value, ...` for a refused cell that holds a common marker, else ''."""
    text = str(cell).strip() if isinstance(cell, str) else None
    if text not in COMMON_MARKERS:
        return ""
    return f"; if {text!r} marks a missing value, set {na_values_override(text)} (read as an empty cell)"


def na_values_override(text: str) -> str:
    """`data.na_values=[NA]` as the command line takes it: quoted where Hydra would read another value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_override(f"data.na_values=[{text}]").value()
    except Exception:  # a character Hydra's grammar refuses unquoted (#, <)
        parsed = None
    return f"data.na_values=[{text}]" if parsed == text else f"data.na_values=[\"{text}\"]"
