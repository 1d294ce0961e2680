"""Gradient-conflict diagnostics (trainer.conflict): the cosines, the conflicting fraction and the norm
ratios against a hand computation, and a training run that writes them per epoch into metrics.csv."""

import csv
import math

import pytest
import torch

from contracts import SGD_64, TINY, compose_config, read_csv, run_cli
from mtlrun.build import build_trainer
from mtlrun.distributed import DistInfo
from mtlrun.diagnostics.conflict import ConflictMeter
from mtlrun.engine.records import write_metrics_csv


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


def test_a_task_without_labels_in_the_batch_is_left_out_of_that_steps_statistics():
    # step 1: c has no label (zero gradient); step 2: every task measured. c's pairs and norm are the mean over
    # step 2 alone, a~b over both; the fraction and the mean norm of step 1 count a and b only
    torch.manual_seed(0)
    shared = torch.randn(4, 3, requires_grad=True)
    w = {"a": torch.randn(4, 3), "b": -torch.randn(4, 3), "c": torch.randn(4, 3)}
    meter = ConflictMeter(["a", "b", "c"], torch.device("cpu"))
    unlabelled_c = {"a": (shared * w["a"]).sum(), "b": (shared * w["b"]).sum(), "c": 0 * shared.sum()}
    meter.measure(unlabelled_c, shared, torch.tensor([1.0, 1.0, 0.0]))
    meter.measure({t: (shared * wt).sum() for t, wt in w.items()}, shared, torch.tensor([True, True, True]))
    row = meter.epoch_row()

    flat = {t: wt.reshape(-1).double() for t, wt in w.items()}
    cos = {(a, b): float(flat[a] @ flat[b] / (flat[a].norm() * flat[b].norm())) for a, b in [("a", "b"), ("a", "c"),
                                                                                           ("b", "c")]}
    for (a, b), value in cos.items():
        assert row[f"conflict/cos/{a}~{b}"] == pytest.approx(value, abs=1e-12)  # never averaged with a 0
    first = float(cos["a", "b"] < 0)  # one measured pair at step 1
    assert row["conflict/fraction"] == pytest.approx((first + sum(v < 0 for v in cos.values()) / 3) / 2)
    norms = {t: float(v.norm()) for t, v in flat.items()}
    two, three = (norms["a"] + norms["b"]) / 2, sum(norms.values()) / 3
    assert row["conflict/norm/a"] == pytest.approx((norms["a"] / two + norms["a"] / three) / 2, rel=1e-12)
    assert row["conflict/norm/c"] == pytest.approx(norms["c"] / three, rel=1e-12)


def test_a_value_never_measured_in_the_epoch_is_nan_not_zero():
    shared = torch.ones(5, requires_grad=True)
    meter = ConflictMeter(["a", "b", "c"], torch.device("cpu"))
    meter.measure({"a": shared.sum(), "b": -shared.sum(), "c": 0 * shared.sum()}, shared, torch.tensor([1.0, 1.0, 0.0]))
    row = meter.epoch_row()
    assert set(row) == {"conflict/cos/a~b", "conflict/cos/a~c", "conflict/cos/b~c", "conflict/fraction",
                        "conflict/norm/a", "conflict/norm/b", "conflict/norm/c"}  # the same columns every epoch
    assert row["conflict/cos/a~b"] == pytest.approx(-1.0) and row["conflict/fraction"] == 1.0
    assert math.isnan(row["conflict/cos/a~c"]) and math.isnan(row["conflict/cos/b~c"])
    assert math.isnan(row["conflict/norm/c"]) and row["conflict/norm/a"] == pytest.approx(1.0)
    meter.measure({"a": shared.sum(), "b": -shared.sum(), "c": 0 * shared.sum()}, shared, torch.tensor([1.0, 0.0, 0.0]))
    row = meter.epoch_row()  # no pair had both tasks labelled: no fraction either
    assert math.isnan(row["conflict/fraction"]) and row["conflict/norm/a"] == pytest.approx(1.0)


def test_a_task_never_labelled_in_the_epoch_has_empty_train_cells_not_zeros(tmp_path):
    # sum has no training label at all: its loss is 0 in every batch, which is no measurement
    cfg = compose_config([*SGD_64, "tasks=multidigits_sum", "data.batch_size=32", "data.label_fraction.sum=0.0",
                          "trainer.conflict=true", "trainer.log_every_n_steps=1"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    trainer.fit()
    row = trainer.history[0]  # the epoch's train row
    assert math.isnan(row["sum/loss"]) and all(math.isfinite(row[f"{t}/loss"]) and row[f"{t}/loss"] > 0
                                               for t in ("left", "right"))
    assert math.isnan(row["conflict/cos/left~sum"]) and math.isnan(row["conflict/norm/sum"])
    assert -1 <= row["conflict/cos/left~right"] <= 1 and row["conflict/fraction"] in (0.0, 1.0)
    assert row["conflict/norm/left"] + row["conflict/norm/right"] == pytest.approx(2.0)  # the mean of the two
    write_metrics_csv(tmp_path / "metrics.csv", [row])
    written = read_csv(tmp_path / "metrics.csv")[0]
    assert written["sum/loss"] == "" and written["conflict/cos/right~sum"] == ""  # the columns stay, empty


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
