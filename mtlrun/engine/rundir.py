"""One live run per run directory.

A run holds an exclusive OS lock (flock) on `<run dir>/.mtlrun.lock` for as long as it writes there. The
kernel drops the lock when the process ends, however it ends (kill -9 included), so a dead run never
leaves a directory stuck; the file itself stays and only says who held it last. Under torchrun rank 0
holds the lock for the whole job and every rank learns the outcome.

Once a run holds the lock nobody else writes there, so the temp files a killed save left behind
(`.<name>.<pid>.tmp`, see checkpoint.save and records.atomic_write_text) are removed.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from mtlrun import distributed
from mtlrun.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected from each other there
    fcntl = None

log = logging.getLogger("mtlrun")
LOCK_NAME = ".mtlrun.lock"
_held: dict[Path, list] = {}  # resolved run dir -> [fd, count]; a process may take its own lock again


def _take(run_dir: Path) -> str | None:
    """Lock `run_dir` for this process; None on success, else who holds it."""
    if run_dir in _held:
        _held[run_dir][1] += 1
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
    _held[run_dir] = [fd, 1]
    remove_stale_temp_files(run_dir)
    return None


def _release(run_dir: Path) -> None:
    entry = _held.get(run_dir)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[run_dir]
        os.close(entry[0])  # closing the descriptor drops the flock


def remove_stale_temp_files(run_dir: Path) -> None:
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")]:
        try:
            tmp.unlink()
            log.info(f"removed {tmp}, left behind by a run that was killed while saving")
        except OSError:
            pass


def acquire(run_dir: str | os.PathLike) -> Path:
    """Take the run dir's lock (rank 0), or raise UsageError on every rank naming the other run."""
    run_dir = Path(run_dir).resolve()
    holder = failure = None
    if distributed.dist_info().is_main:
        try:
            holder = _take(run_dir)
        except OSError as exc:  # e.g. a read-only file system: say so on every rank instead of hanging them
            failure = f"cannot lock run dir {run_dir}: {exc.strerror or exc}"
    holder, failure = distributed.broadcast_object((holder, failure))
    if failure is not None:
        raise UsageError(failure)
    if holder is not None:
        raise UsageError(f"run dir {run_dir} is in use by another mtlrun run ({holder}); wait for it to end, "
                         f"or write elsewhere with hydra.run.dir=...")
    return run_dir


def release(run_dir: Path) -> None:
    if distributed.dist_info().is_main:
        _release(Path(run_dir).resolve())


@contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold the run dir for the life of a `train` or `eval` job (one job of a multirun releases its own)."""
    path = acquire(run_dir)
    try:
        yield path
    finally:
        release(path)
