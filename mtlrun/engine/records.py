"""Run outputs: metrics.csv, results.json and the printed per-task table (docs/architecture.md, run directory).

A metric with nothing to measure is NaN in memory (mtlrun.metrics) and "missing" on disk: an empty cell in
metrics.csv, `null` in results.json (which stays strict JSON: no NaN token), "–" in the printed table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from mtlrun.errors import WriteError

LEADING = ("epoch", "split", "step")
MISSING = "–"  # a metric with nothing to measure, in printed tables


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Temp file + os.replace: readers see the old file or the new one, never a part; errors name the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    finally:
        discard(tmp)


def discard(path: Path) -> None:
    """Remove a temp file if it is there. Quietly: on a read-only file system even the unlink of a missing
    file fails (EROFS), and that must not replace the error that made the write fail."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


ROOM = 64 * 1024  # bytes a folder must take before a command starts: its config files and records are smaller


def writable_folder(folder: str | os.PathLike) -> Path:
    """Make `folder` (with its parents) and write ROOM bytes there and remove them, before any work whose result
    would be lost: a read-only or full file system is a WriteError naming the folder now, not a traceback later
    (and not a Hydra config or log file half-written into a full folder)."""
    folder = Path(folder)
    probe = folder / f".mtlrun-probe.{os.getpid()}.tmp"  # the name rundir.remove_stale_temp_files cleans up
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(ROOM))
    except OSError as exc:
        discard(probe)
        for path in made:  # leave no empty folder behind, leaf first
            try:
                path.rmdir()
            except OSError:
                break
        raise WriteError(folder, exc) from exc
    discard(probe)
    return folder


def file_in_the_way(key: str, folder: str | os.PathLike) -> str | None:
    """`key=folder: ... is a file, not a folder` where the folder or one of its parents is a file, else None."""
    folder = Path(folder).expanduser()
    for path in (folder, *folder.parents):
        if path.is_dir():
            return None
        if path.exists():
            where = "" if path == folder else f"{path} "
            return f"{key}={folder}: {where}is a file, not a folder"
    return None


def write_metrics_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """One row per epoch and split; columns: epoch, split, step, then the rest sorted (`<task>/<metric>`)."""
    keys = sorted({k for row in rows for k in row} - set(LEADING))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*LEADING, *keys], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_metrics_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            if v in ("", None):
                continue
            try:
                parsed[k] = int(v) if k in ("epoch", "step") else (v if k == "split" else float(v))
            except ValueError:
                parsed[k] = v
        out.append(parsed)
    return out


def write_results(path: str | os.PathLike, metrics: dict[str, float], **extra) -> None:
    """results.json; every non-finite number in it (a metric with nothing to measure) becomes null."""
    payload = {"metrics": {k: float(v) for k, v in sorted(metrics.items())}, **extra}
    atomic_write_text(path, json.dumps(_finite_or_null(payload), indent=2, allow_nan=False) + "\n")


def _finite_or_null(node):
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite_or_null(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite_or_null(v) for v in node]
    return node


def results_table(tasks: dict, columns: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one line per task metric, one column per split (e.g. val, test)."""
    header = ["task", "metric", *columns]
    lines = []
    for name, task in tasks.items():
        label = f"{name} (aux)" if getattr(task, "auxiliary", False) else name
        for metric in task.metric_names:
            arrow = "↑" if task.higher_is_better[metric] else "↓"
            cells = []
            for split_values in columns.values():
                v = split_values.get(f"{name}/{metric}")
                cells.append(MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
            lines.append([label, f"{metric} {arrow}", *cells])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])
