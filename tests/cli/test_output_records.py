"""The issue's commands through the real CLI (issue 21, cases 2-4 and 8): the exit code and the line a user
sees, and that nothing already there changed. The rules themselves: tests/engine/test_output_folders.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from contracts import run_cli

pytestmark = pytest.mark.e2e


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def first_error(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error:"))


def test_eval_into_a_train_run_dir_is_refused_before_anything_is_written(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert first_error(proc.stderr) == (f"error: hydra.run.dir={run}: holds the records of a `mtlrun train` run, "
                                        f"which `mtlrun eval` would overwrite; choose another hydra.run.dir")
    assert "Traceback" not in proc.stderr and snapshot(run) == before  # .hydra/, the lock file and log included


def test_export_into_another_exports_folder_and_its_bad_options_are_listed_before_anything_runs(trained_run,
                                                                                                 tmp_path):
    folder = tmp_path / "export"  # checkpoint A exported as weights and onnx; now B as torchscript
    folder.mkdir()
    for name in ("model.safetensors", "model.onnx", "model.onnx.data", "config.yaml", "export.json"):
        (folder / name).write_text(f"checkpoint A's {name}")
    before = snapshot(tmp_path)
    proc = run_cli("export", f"checkpoint={trained_run / 'checkpoints' / 'best.pt'}", "format=torchscript",
                   "tolerance=nan", "data.batch_size=0", f"output={folder}", f"hydra.run.dir={tmp_path / 'log'}",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[:4] == [  # as the list is printed, one problem a line
        "error: invalid config (3 problem(s)):",
        "  - tolerance=nan: a finite number >= 0 (the largest abs difference accepted)",
        f"  - output={folder}: holds config.yaml, export.json, model.onnx, model.onnx.data, model.safetensors; an "
        f"export folder describes one model: choose a folder without these (export each format into a folder of "
        f"its own)",
        "  - data.batch_size=0: must be an integer >= 1"]
    assert "Traceback" not in proc.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("log")} == before


# Writing under READ_ONLY fails as on a read-only mount (EROFS), the unlink of a missing temp file included;
# patched, because the suite may run as root, whom permissions do not stop.
READ_ONLY = """
import builtins, errno, io, os, pathlib, sys
READ_ONLY = sys.argv.pop(1)
def refuse(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
real_open, real_unlink = builtins.open, pathlib.Path.unlink
def ro_open(file, mode="r", *args, **kwargs):
    if str(file).startswith(READ_ONLY) and any(c in mode for c in "wax+"):
        refuse(file)
    return real_open(file, mode, *args, **kwargs)
def ro_unlink(self, missing_ok=False):
    if str(self).startswith(READ_ONLY):
        refuse(self)
    return real_unlink(self, missing_ok=missing_ok)
builtins.open = io.open = ro_open  # pathlib opens through io.open
pathlib.Path.unlink = ro_unlink
from mtlrun.cli import main
sys.argv[0] = "mtlrun"
main(sys.argv[1:])
"""


def test_predict_into_a_read_only_folder_is_one_line_exit_1(trained_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's file\n")
    proc = run_cli("predict", f"checkpoint={trained_run / 'checkpoints' / 'best.pt'}", f"output={out}",
                   f"hydra.run.dir={tmp_path / 'log'}", cwd=tmp_path,
                   launcher=[sys.executable, "-c", READ_ONLY, str(out)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert first_error(proc.stderr) == f"error: {out}: cannot write there: Read-only file system"
    assert "Traceback" not in proc.stderr and snapshot(out) == {"notes.txt": b"the user's file\n"}
