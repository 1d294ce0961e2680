"""Exact resume: at an epoch boundary and from a SIGTERM/SIGINT in the middle of an epoch."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from contracts import EXACT, TRAINED_RUN, read_results, run_cli, start_cli

pytestmark = pytest.mark.e2e  # every test starts the CLI



def _weights(run):
    return torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_two_epochs_plus_resume_equals_four_straight(tmp_path, trained_run):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    assert run_cli("train", *EXACT, "trainer.max_epochs=4", f"hydra.run.dir={straight}",
                   cwd=tmp_path).returncode == 0
    assert TRAINED_RUN == [*EXACT, "trainer.max_epochs=2"]  # trained_run is the first two epochs
    shutil.copytree(trained_run, first)  # resume continues in the checkpoint's run dir: not the shared one
    proc = run_cli("train", f"resume={first / 'checkpoints/last.pt'}", "trainer.max_epochs=4",
                   f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_weights(straight, resumed)
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()
    assert read_results(straight) == read_results(resumed)
    assert "max_epochs: 4" in (resumed / "config.yaml").read_text()


def test_resume_refuses_changing_a_group(tmp_path, trained_run):
    first = tmp_path / "first"
    shutil.copytree(trained_run, first)  # resume continues in the checkpoint's run dir: not the shared one
    proc = run_cli("train", f"resume={first / 'checkpoints/last.pt'}", "optim=sgd",
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "optim" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli("train", f"resume={first / 'checkpoints/last.pt'}", "tasks.only=[left]",
                   f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "do not fit the model" in proc.stderr and "Traceback" not in proc.stderr


# 3 epochs of 64 steps: a signal lands somewhere in epoch 2 or 3; wherever it lands, resuming must reproduce
# the uninterrupted run bit for bit. A two-stage CNN (the model is not the point): a step takes about 10 ms on
# an idle 2-core machine, so epochs 2 and 3 left after the signal's 0.1 s still last over a second, and longer
# on a loaded or slower one.
LONG = [*EXACT, "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "data.n_train=2048",
        "trainer.max_epochs=3"]


@pytest.fixture(scope="module")
def straight_long_run(tmp_path_factory) -> Path:
    """The uninterrupted LONG run both signal tests compare with (only read)."""
    straight = tmp_path_factory.mktemp("straight") / "run"
    proc = run_cli("train", *LONG, f"hydra.run.dir={straight}", cwd=straight.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return straight


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_and_resume_is_exact(tmp_path, straight_long_run, sig, code):
    args = LONG
    straight, stopped, resumed = straight_long_run, tmp_path / "stopped", tmp_path / "resumed"

    proc = start_cli("train", *args, f"hydra.run.dir={stopped}", cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("epoch 1/3"):  # logged just before epoch 1's checkpoint is written
            time.sleep(0.1)  # past that write, a few steps into epoch 2
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    last = stopped / "checkpoints" / "last.pt"
    assert f"resume with: mtlrun train resume={last}" in out + err
    assert not (stopped / "results.json").exists()  # an interrupted run has no results to mistake
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1 and state["batches_done"] > 0  # stopped inside epoch 2 or 3

    proc = run_cli("train", f"resume={last}", f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_weights(straight, resumed)
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()
