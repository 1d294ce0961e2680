"""Reading a manifest (CSV, JSON Lines or Parquet) into columns of cells, and the collector of its problems.

Every problem names the manifest, the data row (from 1), the file line where there is one, and the column.
"""

from __future__ import annotations

import codecs
import csv
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlrun.data.table.missing import Markers, blank_markers
from mtlrun.errors import ConfigError, Problems

SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_SHOWN = 10  # problems shown per column and kind before "... and N more"
CSV_FIELD_LIMIT = 2**31 - 1  # the largest csv.field_size_limit every platform takes (a C long)
BYTE_ORDER_MARKS = {"utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
                    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)}


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
        return where((self.path, self.numbers, self.lines, column), row)


def where(origin: tuple, row: int) -> str:
    """`<manifest> row N (line L), column 'c'` for row index `row`; origin = (path, numbers, lines, column)."""
    path, numbers, lines, column = origin
    line = f" (line {int(lines[row])})" if lines is not None else ""
    return f"{path} row {int(numbers[row])}{line}, column '{column}'"


def is_empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_manifest(path: str, problems: Problems, encoding: str = "utf-8", markers: Markers = Markers()) -> Manifest:
    """Read a CSV / JSON Lines / Parquet manifest; malformed rows are added to `problems` and skipped; cells that
    match a `markers` (data.na_values) are empty."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt == "csv":
        manifest = _read_csv(path, problems, encoding)
    elif fmt == "jsonl":
        manifest = _read_jsonl(path, problems, encoding)
    else:
        manifest = _read_parquet(path)
    blank_markers(manifest.cells, markers, path)
    return manifest


def _lines(path: str, encoding: str, problems: Problems, newline: str | None = None):
    """The text lines of a manifest; text that is not `encoding` stops the read with its line (a problem)."""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # skips the BOM Excel writes
    with open(path, newline=newline, encoding=codec) as f:
        try:
            yield from f
            return
        except UnicodeError as exc:  # not only undecodable bytes: utf-16 / utf-32 without a byte-order mark
            error = exc
    problems.add(_undecodable(path, encoding, codec, error))
    problems.raise_if_any()


def _undecodable(path: str, encoding: str, codec: str, error: UnicodeError) -> str:
    """Where the text stops being `codec` and why (read again as a whole: this runs only on failure)."""
    data = Path(path).read_bytes()
    if isinstance(error, UnicodeDecodeError):
        try:
            data.decode(codec)
        except UnicodeDecodeError as exc:
            bad = data[exc.start:exc.end]
            bad = f"byte{'s' if len(bad) > 1 else ''} " + " ".join(f"0x{b:02x}" for b in bad)
            return (f"{path}{_position(data[:exc.start].decode(codec, errors='replace'))}: {bad} is not valid "
                    f"{encoding} (data.encoding={encoding}); {_advice(encoding, data)}")
    return (f"{path}{_position(_decoded_before_error(data, codec))}: cannot be read as {encoding} ({error}); "
            f"{_advice(encoding, data)}")


def _decoded_before_error(data: bytes, codec: str) -> str:
    """The text an incremental decoder (as open() uses) gives, line by line, before it fails: a decoder whose
    error is not about one byte (a missing byte-order mark) gives no position of its own."""
    decoder, text = codecs.getincrementaldecoder(codec)(), []
    for piece in data.splitlines(keepends=True):
        try:
            text.append(decoder.decode(piece))
        except UnicodeError:
            break
    return "".join(text)


def _position(before: str) -> str:
    """` line L, character C` of the character after the text `before`."""
    return f" line {before.count(chr(10)) + 1}, character {len(before) - before.rfind(chr(10))}"


def _advice(encoding: str, data: bytes) -> str:
    name = codecs.lookup(encoding).name
    for family, marks in BYTE_ORDER_MARKS.items():  # UTF-32 first: its little-endian mark starts as UTF-16's
        if name != family and data.startswith(marks):
            return f"the file starts with a {family.upper()} byte-order mark: data.encoding={family}"
        if name == family and not data.startswith(marks):
            return f"a {family.upper()} file without a byte-order mark needs data.encoding={family}-le or {family}-be"
    return ("set data.encoding to the file's encoding, e.g. data.encoding=latin-1 (or cp1252 for files saved by "
            "Excel on Windows), or save the file as UTF-8")


@contextmanager
def _csv_cells_of_any_size():
    """csv refuses cells over 128 KiB (field_size_limit); a long text reads from JSON Lines, so from CSV too.

    The limit is process-wide state: raised for this read only, then restored."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: str, problems: Problems, encoding: str) -> Manifest:
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


def _check_header(path: str, header: list[str], problems: Problems) -> None:
    seen = set()
    for i, name in enumerate(header):
        if "\x00" in name:  # UTF-16 without a byte-order mark decodes as UTF-8 or latin-1, a NUL every other byte
            order = "be" if header[0].startswith("\x00") else "le"  # which byte of the first character is 0
            problems.add(f"{path}: the header holds NUL characters, as UTF-16 text read as another encoding does; "
                         f"set data.encoding=utf-16-{order}")
            problems.raise_if_any()  # every row would only repeat it
        if not name:
            problems.add(f"{path}: column {i + 1} of the header has no name")
        elif name in seen:
            problems.add(f"{path}: the header names column '{name}' twice")
        seen.add(name)


def _read_jsonl(path: str, problems: Problems, encoding: str) -> Manifest:
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
    cells = {c: [None if is_empty(r.get(c)) else r.get(c) for r in records] for c in columns}
    return Manifest(path, list(columns), cells, np.array(numbers), np.array(lines))


def _read_parquet(path: str) -> Manifest:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        message = (f"data.path={path}: reading Parquet needs pyarrow, which mtlrun does not install; "
                   f"`pip install pyarrow`, or save the table as CSV or JSON Lines")
        raise ConfigError([message]) from None
    table = pq.read_table(path)
    cells = {name: [None if is_empty(v) else v for v in table.column(name).to_pylist()] for name in table.column_names}
    return Manifest(path, list(table.column_names), cells, np.arange(1, table.num_rows + 1), None)
