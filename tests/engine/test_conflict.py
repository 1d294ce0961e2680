"""Gradient-conflict diagnostics (trainer.conflict): the cosines, the conflicting fraction and the norm
ratios against a hand computation, and a training run that writes them per epoch into metrics.csv."""

import csv
import math

import pytest
import torch

from contracts import TINY, run_cli
from mtlrun.engine.conflict import ConflictMeter


def test_cosines_fraction_and_norms_equal_a_hand_computation():
    torch.manual_seed(0)
    shared = torch.randn(4, 3, requires_grad=True)
    w = {"a": torch.randn(4, 3), "b": torch.randn(4, 3), "c": torch.randn(4, 3)}
    meter = ConflictMeter(["a", "b", "c"], torch.device("cpu"))
    losses = {t: (shared * wt).sum() for t, wt in w.items()}  # d loss_t / d shared = w_t
    meter.measure(losses, shared)
    losses = {t: 2 * (shared * wt).sum() for t, wt in w.items()}  # same directions, twice the norm
    meter.measure(losses, [shared])
    row = meter.epoch_row()

    flat = {t: wt.reshape(-1).double() for t, wt in w.items()}
    cos = {(a, b): float(flat[a] @ flat[b] / (flat[a].norm() * flat[b].norm()))
           for a, b in [("a", "b"), ("a", "c"), ("b", "c")]}
    for (a, b), value in cos.items():
        assert row[f"conflict/cos/{a}~{b}"] == pytest.approx(value, abs=1e-12)
    assert row["conflict/fraction"] == pytest.approx(sum(v < 0 for v in cos.values()) / 3)
    norms = {t: float(v.norm()) for t, v in flat.items()}
    mean = sum(norms.values()) / 3
    for t in w:
        assert row[f"conflict/norm/{t}"] == pytest.approx(norms[t] / mean, rel=1e-12)
    assert meter.epoch_row() == {}  # reset after each epoch; nothing measured since


def test_opposite_gradients_conflict_fully():
    shared = torch.ones(5, requires_grad=True)
    meter = ConflictMeter(["up", "down"], torch.device("cpu"))
    meter.measure({"up": shared.sum(), "down": -3 * shared.sum()}, shared)
    row = meter.epoch_row()
    assert row["conflict/cos/up~down"] == pytest.approx(-1.0)
    assert row["conflict/fraction"] == 1.0
    assert row["conflict/norm/down"] == pytest.approx(3 * row["conflict/norm/up"])


@pytest.mark.e2e
def test_a_run_with_conflict_on_writes_it_per_epoch(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", *TINY, "tasks=multidigits_all", "trainer.max_epochs=2", "trainer.conflict=true",
                     "trainer.log_every_n_steps=2", "weighting=upgrad", "weighting.grad_on=representation",
                     f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["split"] == "train"]
    assert len(rows) == 2
    tasks = ["left", "right", "sum", "parity"]
    for row in rows:
        cosines = [float(v) for k, v in row.items() if k.startswith("conflict/cos/")]
        assert len(cosines) == 6 and all(-1 <= c <= 1 for c in cosines)
        assert 0 <= float(row["conflict/fraction"]) <= 1
        assert math.isclose(sum(float(row[f"conflict/norm/{t}"]) for t in tasks) / 4, 1.0, rel_tol=1e-4)
