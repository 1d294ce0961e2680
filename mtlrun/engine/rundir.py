"""One live run per run directory.

A run holds an exclusive OS lock (flock) on `<run dir>/.mtlrun.lock` for as long as it writes there. The
kernel drops the lock when the process ends, however it ends (kill -9 included), so a dead run never
leaves a directory stuck; the file itself stays and only says who held it last. Under torchrun rank 0
holds the lock for the whole job and every rank learns the outcome.

Once a run holds the lock nobody else writes there, so the temp files a killed save left behind
(`.<name>.<pid>.tmp`, see checkpoint.save and records.atomic_write_text) are removed.

A command never overwrites another command's records: the run dir names the command that took it in
`.mtlrun.command`, and a dir taken by another command (or, from before that file existed, holding another
command's records: RECORDS) is refused before anything is written there. Two commands keep one run per dir
even against themselves: `train` (an earlier run's checkpoints, unless this run resumes it) and `export` (a
folder describes one model).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from mtlrun import distributed
from mtlrun.engine.records import atomic_write_text, file_in_the_way, writable_folder
from mtlrun.errors import MtlrunError, RunDirRefused, WriteError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected from each other there
    fcntl = None

log = logging.getLogger("mtlrun")
LOCK_NAME = ".mtlrun.lock"
MARKER = ".mtlrun.command"  # the command that took the dir, e.g. "train"
# What makes a dir a command's, for dirs from before MARKER existed; looked for in this order (a train run dir
# holds results.json too, an eval run dir does not hold checkpoints/).
RECORDS = {"train": ("checkpoints",), "export": ("export.json",), "affinity": ("affinity.json",),
           "eval": ("results.json",), "predict": ("predictions.csv", "predictions.jsonl")}
# Records that make a dir an earlier run's even for the same command, where a second run would destroy them.
ONE_RUN_PER_DIR = {"train": ("checkpoints/last.pt", "checkpoints/best.pt", "results.json"),
                   "export": ("export.json", "model.safetensors", "model.ts", "model.onnx")}
_held: dict[Path, list] = {}  # resolved run dir -> [fd, count]; a process may take its own lock again


def owner(folder: Path) -> str | None:
    """The command whose records `folder` holds: its MARKER, else the first RECORDS it has; None for neither."""
    try:
        marked = (folder / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        marked = ""
    if marked in RECORDS:
        return marked
    return next((command for command, names in RECORDS.items() if any((folder / n).exists() for n in names)), None)


def refusal(folder: Path, command: str, key: str = "hydra.run.dir", where: str | None = None,
            resumes: bool = False) -> str | None:
    """Why `command` must not write into `folder`, or None: `<where>: holds ...; choose another <key>` (where:
    `key=folder` unless given). `resumes`: the run continues the train run whose checkpoint is in `folder`."""
    found = owner(folder)
    if found is None:
        return None
    where = where or f"{key}={folder}"
    if found != command:
        return (f"{where}: holds the records of a `mtlrun {found}` run, which `mtlrun {command}` would "
                f"overwrite; choose another {key}")
    earlier = [n for n in ONE_RUN_PER_DIR.get(command, ()) if (folder / n).exists()]
    if not earlier or resumes:
        return None
    if command == "train":
        return (f"{where}: holds the records of an earlier `mtlrun train` run ({', '.join(earlier)}), which "
                f"this run would overwrite; continue it with resume={folder / 'checkpoints' / 'last.pt'}, or "
                f"choose another {key}")
    return (f"{where}: holds an earlier export ({', '.join(earlier)}); an export folder describes one "
            f"model: choose another {key}")


def _live_holder(run_dir: Path) -> str | None:
    """Who holds run_dir's lock now, found without writing anything (None: nobody)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None  # closing the descriptor below drops this probe's lock
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None  # cannot tell from a read-only descriptor (flock emulated on NFS): _take's lock decides
        return os.read(fd, 4096).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def _take(run_dir: Path, command: str | None = None, key: str = "hydra.run.dir", where: str | None = None,
          resumes: bool = False) -> str | None:
    """Lock `run_dir` for this process; None on success, else who holds it. Raises RunDirRefused where
    `command` must not write there (refusal), WriteError where nothing can be written there."""
    if run_dir in _held:
        _held[run_dir][1] += 1
        return None
    holder = _live_holder(run_dir)
    if holder is not None:
        return holder
    why = file_in_the_way(key, run_dir) or (refusal(run_dir, command, key, where, resumes) if command else None)
    if why:
        raise RunDirRefused(why)
    writable_folder(run_dir)
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
    if command and owner(run_dir) is None:
        try:
            atomic_write_text(run_dir / MARKER, f"{command}\n")
        except WriteError:
            _release(run_dir)
            raise
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


def acquire(run_dir: str | os.PathLike, command: str | None = None, key: str = "hydra.run.dir",
            where: str | None = None, resumes: bool = False) -> Path:
    """Take the run dir for `command` (rank 0): its lock, and its MARKER if it has none. Raises on every rank
    (so none of them hangs): RunDirRefused naming the run that holds it or whose records it holds (refusal),
    WriteError where nothing can be written there (a read-only or full file system)."""
    run_dir = Path(run_dir).resolve()
    holder = failure = None
    if distributed.dist_info().is_main:
        try:
            holder = _take(run_dir, command, key, where, resumes)
        except (RunDirRefused, WriteError) as exc:
            failure = exc
        except OSError as exc:
            failure = WriteError(run_dir, exc)
    # the other ranks learn the message and exit code (an exception with its own arguments does not pickle)
    holder, message, code = distributed.broadcast_object(
        (holder, None if failure is None else str(failure), None if failure is None else failure.exit_code))
    if failure is not None:
        raise failure
    if message is not None:
        raise RunDirRefused(message) if code == RunDirRefused.exit_code else MtlrunError(message)
    if holder is not None:
        raise RunDirRefused(f"run dir {run_dir} is in use by another mtlrun run ({holder}); wait for it to end, "
                            f"or write elsewhere with hydra.run.dir=...")
    return run_dir


def release(run_dir: Path) -> None:
    if distributed.dist_info().is_main:
        _release(Path(run_dir).resolve())


@contextmanager
def locked(run_dir: str | os.PathLike, command: str | None = None, key: str = "hydra.run.dir",
           where: str | None = None, resumes: bool = False):
    """Hold the run dir for the life of a command's job (one job of a multirun releases its own)."""
    path = acquire(run_dir, command, key, where, resumes)
    try:
        yield path
    finally:
        release(path)


def resumes_in(run_dir: str | os.PathLike, resume) -> bool:
    """Whether `resume=` continues the run in `run_dir` (its checkpoint is in there)."""
    if resume in (None, "", "null", "None"):
        return False
    return Path(run_dir).expanduser().resolve() in Path(str(resume)).expanduser().resolve().parents


def sweep_refusal(sweep_dir: Path, command: str) -> str | None:
    """Why a `-m` sweep of `command` into `sweep_dir` would overwrite the records of an earlier run in one of its
    job dirs (0, 1, ...), found before Hydra writes a job's .hydra/ files there; None when it would not."""
    if file_in_the_way("hydra.sweep.dir", sweep_dir):
        return file_in_the_way("hydra.sweep.dir", sweep_dir)
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)) \
        if sweep_dir.is_dir() else []
    return next((why for d in jobs if (why := refusal(d.resolve(), command, "hydra.sweep.dir",
                                                      f"hydra.sweep.dir={sweep_dir}: its job dir {d.name}"))), None)
