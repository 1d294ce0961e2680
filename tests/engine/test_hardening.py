"""Hostile and careless use: crafted checkpoints, two runs in one directory, a kill between the two
checkpoint writes, exploding weights, a full disk, a second signal. Each case goes through the real CLI."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contracts import TINY, read_results, run_cli, start_cli

pytestmark = pytest.mark.e2e  # every test starts the CLI or reads the checkpoint of the session's trained_run

# Python run as `mtlrun`, after a patch to mtlrun's own modules: the way these tests inject a failure at
# an exact point (between two checkpoint writes, in the middle of a save) without hooks in mtlrun itself.
PATCHED = [sys.executable, "-c"]
MAIN = "\nfrom mtlrun.cli import main\nsys.argv[0] = 'mtlrun'\nmain(sys.argv[1:])\n"


# TINY with a one-stage CNN, for the tests of a stop, a kill or a failed save, where the model is not the point:
# its steps take milliseconds, the default CNN's about a tenth of a second.
SMALL = [*TINY, "backbone.image.channels=[8]", "backbone.image.out_dim=32"]


def run_patched(patch: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = "import os, sys, signal, errno\n" + patch + MAIN
    return run_cli(*args, cwd=cwd, launcher=[*PATCHED, script])


def weights_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- a checkpoint's config is data
def _craft(trained_run: Path, tmp_path: Path, name: str, change) -> Path:
    state = torch.load(trained_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    state = copy.deepcopy(state)
    change(state["config"])
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


HOSTILE = {
    # a file write, a mtlrun function that writes files, an attribute walk from a mtlrun module to `os`,
    # a nested node Hydra would build recursively, an interpolation that reads the environment
    "write_text": (lambda c: c.update(fusion={"_target_": "pathlib.Path.write_text", "self": "PWNED", "data": "x"}),
                   "fusion._target_=pathlib.Path.write_text", "trusted_targets=[pathlib]"),
    "mtlrun_function": (lambda c: c.update(data={"_target_": "mtlrun.engine.records.atomic_write_text",
                                                 "path": "PWNED", "text": "x"}),
                        "data._target_=mtlrun.engine.records.atomic_write_text", "never builds this"),
    "attribute_walk": (lambda c: c["weighting"].update(_target_="mtlrun.models.base.torch.save"),
                       "weighting._target_=mtlrun.models.base.torch.save", "never builds this"),
    "nested": (lambda c: c["arch"].update(extra={"_target_": "numpy.load", "file": "x", "allow_pickle": True}),
               "arch.extra._target_=numpy.load", "trusted_targets=[numpy]"),
    "interpolation": (lambda c: c["data"].update(seed="${oc.env:HOME}"), "data.seed='${oc.env:HOME}'",
                      "interpolations are refused"),
}


def test_checkpoint_config_cannot_run_code(trained_run, tmp_path):
    """Every hostile entry at once: each is listed, nothing is built, for eval and for resume alike."""
    def change(config):
        for hostile, _, _ in HOSTILE.values():
            hostile(config)

    path = _craft(trained_run, tmp_path, "hostile", change)
    for command, arg in (("eval", f"checkpoint={path}"), ("train", f"resume={path}")):
        run = tmp_path / command
        proc = run_cli(command, arg, f"hydra.run.dir={run}", cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert f"{arg}: refused" in proc.stderr and "nothing was built or run (5 problem(s))" in proc.stderr
        for _, key, hint in HOSTILE.values():
            line = next(line for line in proc.stderr.splitlines() if key in line)
            assert hint in line, line
        assert "Traceback" not in out
        assert not (tmp_path / "PWNED").exists() and not (run / "PWNED").exists()
        assert not (run / "results.json").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_entry_is_refused_alone(trained_run, name):
    from mtlrun.errors import UsageError
    from mtlrun.trust import check_checkpoint_config

    state = torch.load(trained_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    check_checkpoint_config(state["config"], [], "checkpoint=x")  # what mtlrun itself wrote passes
    change, key, hint = HOSTILE[name]
    change(state["config"])
    with pytest.raises(UsageError, match="1 problem") as info:
        check_checkpoint_config(state["config"], [], "checkpoint=x")
    assert key in str(info.value) and hint in str(info.value)


def test_user_class_in_a_checkpoint_needs_trusted_targets(trained_run, tmp_path):
    (tmp_path / "mypkg.py").write_text("from mtlrun.models.arch.hps import HardParameterSharing as MyArch\n")
    path = _craft(trained_run, tmp_path, "mine", lambda c: c["arch"].update(_target_="mypkg.MyArch"))
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cli("eval", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "arch._target_=mypkg.MyArch" in proc.stderr, proc.stderr
    assert "trusted_targets=[mypkg]" in proc.stderr
    proc = run_cli("eval", f"checkpoint={path}", "trusted_targets=[mypkg]", f"hydra.run.dir={tmp_path / 'ok'}",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_results(tmp_path / "ok") == {k: v for k, v in read_results(trained_run).items()
                                             if k.startswith("test/")}


# ----------------------------------------------------------------------------- one live run per run dir
def test_second_run_into_a_live_run_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    # 5000 epochs of 16 steps (about a tenth of a second each here, ten minutes in all): the run is still
    # training while the other two start, however slow the machine
    args = [*SMALL, "data.n_train=512", "trainer.max_epochs=5000", f"hydra.run.dir={run}"]
    first = start_cli("train", *args, cwd=tmp_path, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:
            if line.startswith("epoch 2/"):  # epoch 1's last.pt is written: the resume after the kill needs it
                break
        config = (run / "config.yaml").read_text()
        hydra_files = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
        last = run / "checkpoints" / "last.pt"
        for extra in (["trainer.max_epochs=2", "seed=7"], [f"resume={last}"]):
            command = ["train", *TINY, *extra] if "seed=7" in extra else ["train", *extra]
            proc = run_cli(*command, f"hydra.run.dir={run}", cwd=tmp_path)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert f"run dir {run} is in use by another mtlrun run (pid {first.pid} " in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
        assert (run / "config.yaml").read_text() == config  # the live run's files are untouched
        assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_files
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        first.communicate(timeout=60)
    last = run / "checkpoints" / "last.pt"
    epochs = torch.load(last, weights_only=True)["epoch"] + 1
    proc = run_cli("train", f"resume={last}", f"trainer.max_epochs={epochs}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------- the checkpoint set
KILL_WHILE_WRITING_BEST = """
import mtlrun.engine.checkpoint as checkpoint
real_save = checkpoint.save
def save(path, state):
    if path.name == "best.pt" and state["epoch"] >= 2:
        path.with_name(f".best.pt.{os.getpid()}.tmp").write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(path, state)
checkpoint.save = save
"""


def test_kill_between_last_and_best_then_resume_reports_the_checkpoint_it_measured(tmp_path):
    run = tmp_path / "run"
    # the val loss of a task falls every epoch this early in training (2.30, 2.25, 2.23 here, a two-stage CNN
    # on 32 steps an epoch; SMALL's 8 steps of one stage do not learn yet): epoch 2 is the best so far
    args = [*TINY, "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "data.n_train=1024",
            "trainer.max_epochs=3", "trainer.monitor=val/left/loss", f"hydra.run.dir={run}"]
    proc = run_patched(KILL_WHILE_WRITING_BEST, "train", *args, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert (last["epoch"], last["best_epoch"], best["epoch"]) == (2, 2, 1)  # the pair the kill left
    assert list((run / "checkpoints").glob(".*.tmp"))

    proc = run_cli("train", f"resume={run / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "best.pt restored from it" in out
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed save's temp file is gone
    results = json.loads((run / "results.json").read_text())
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert results["best_epoch"] == best["epoch"] >= 2
    assert results["monitor"]["value"] == best["best_value"]
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={tmp_path / 'ev'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path / "ev") == {k: v for k, v in results["metrics"].items() if k.startswith("test/")}


# --------------------------------------------------------------------------------- non-finite weights
def test_exploding_lr_never_reaches_a_checkpoint(tmp_path):
    # epoch 1 trains normally; from epoch 2 the lr is 1e29 and the weights blow up
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "optim=sgd", "trainer.max_epochs=2", "scheduler=multistep",
                   "scheduler.milestones=[0.5]", "scheduler.gamma=1e32", "scheduler.warmup_steps=0",
                   "trainer.skip_nonfinite=true", f"hydra.run.dir={run}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # the steps skipped leave the (huge, finite) weights as they were; the model's NaN on val stops the run
    assert "error: after epoch 2 the model gives a non-finite val loss" in proc.stderr
    assert "nothing was saved" in proc.stderr
    assert f"{run / 'checkpoints' / 'last.pt'} is the last good checkpoint" in proc.stderr
    assert "Traceback" not in out and not (run / "results.json").exists()
    for name in ("last.pt", "best.pt"):
        assert weights_finite(run / "checkpoints" / name)
        assert torch.load(run / "checkpoints" / name, weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------------------------------ full disk
DISK_FULL_AT_EPOCH_2 = """
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2:
        f.write(b"partial")
        try:  # what torch 2.x does on a full disk (seen on a 20 MB tmpfs): its zip writer raises over the OSError
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5354816 vs 5354704")
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_disk_full_while_saving_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    proc = run_patched(DISK_FULL_AT_EPOCH_2, "train", *SMALL, "trainer.max_epochs=3", f"hydra.run.dir={run}",
                       cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    last = run / "checkpoints" / "last.pt"
    assert f"error: {last}: cannot write there: No space left on device; the previous last.pt is intact" in proc.stderr
    assert "Traceback" not in out
    assert not list(run.rglob(".*.tmp"))
    assert torch.load(last, weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------------------------- second signal
SIGNAL_DURING_EVERY_SAVE = """
import mtlrun.engine.checkpoint as checkpoint
real_save = checkpoint.save
def save(path, state):
    os.kill(os.getpid(), signal.SIGTERM)  # the first save gets the first signal, the stop's save the second
    real_save(path, state)
checkpoint.save = save
"""


def test_second_signal_during_the_save_waits_for_it(tmp_path):
    run = tmp_path / "run"
    proc = run_patched(SIGNAL_DURING_EVERY_SAVE, "train", *SMALL, "trainer.max_epochs=3", f"hydra.run.dir={run}",
                       cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out
    assert "received again: stopping once the checkpoint being written is complete" in out
    assert "Traceback" not in out
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["batches_done"] > 0  # the stop's save, mid-epoch 2, is complete
    assert not list(run.rglob(".*.tmp"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_double_signal_exits_cleanly(tmp_path, sig, code):
    run = tmp_path / "run"
    args = [*SMALL, "data.n_train=512", "trainer.max_epochs=1000", f"hydra.run.dir={run}"]  # running when signalled
    proc = start_cli("train", *args, cwd=tmp_path)
    last = run / "checkpoints" / "last.pt"
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            break
    while not last.is_file():  # the epoch's line is logged just before its checkpoint is written
        time.sleep(0.05)
    proc.send_signal(sig)
    time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err
    assert f"{signal.Signals(sig).name}: stopped" in out + err
    assert torch.load(last, weights_only=True)["epoch"] >= 1 and weights_finite(last)
    assert not list(run.rglob(".*.tmp"))
