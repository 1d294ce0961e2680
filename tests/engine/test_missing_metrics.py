"""A task with nothing to measure in a split (partial labels): NaN in memory, null in results.json, an empty
metrics.csv cell, "–" in tables, a warning naming the task and the split; the checkpoint monitor and Δm%
never use such a value as if it were a measurement."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import nn

from contracts import TINY, read_results, run_cli
from mtlrun.engine.evaluate import evaluate_split, missing_tasks
from mtlrun.engine.monitor import Monitor
from mtlrun.engine.records import read_metrics_csv, results_table, write_results
from mtlrun.tasks import Classification, Regression

CPU = torch.device("cpu")


class Fixed(nn.Module):
    """Predicts the same logits / value for every sample: enough to run evaluate_split."""

    def forward(self, inputs, modality_mask=None):
        n = len(inputs["x"])
        return {"cls": torch.tensor([[2.0, 0.0, 0.0]]).expand(n, 3), "reg": torch.full((n, 1), 1.0)}


def _tasks():
    tasks = {"cls": Classification(3), "reg": Regression(1)}
    for name, task in tasks.items():
        task.name = name
    return tasks


def _batches(reg_labelled: bool):
    for _ in range(2):
        mask = torch.full((4,), reg_labelled)
        yield {"inputs": {"x": torch.zeros(4, 2)},
               "targets": {"cls": torch.tensor([0, 0, 1, 2]),
                           "reg": torch.where(mask, 3.0, float("nan")).view(4, 1)},
               "label_mask": {"reg": mask}}


def test_a_task_without_labels_is_nan_and_warned_about_by_task_and_split(caplog):
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        out = evaluate_split(Fixed(), _tasks(), list(_batches(False)), device=CPU, split="val")
    assert out["cls/accuracy"] == pytest.approx(0.5) and math.isfinite(out["cls/loss"])
    assert all(math.isnan(out[k]) for k in ("reg/loss", "reg/mae", "reg/rmse")), out  # never 0.0
    assert missing_tasks(out, ["cls", "reg"]) == ["reg"]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("val split: nothing to measure for task(s) 'reg'")
    assert "null in results.json" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        labelled = evaluate_split(Fixed(), _tasks(), list(_batches(True)), device=CPU, split="val")
        evaluate_split(Fixed(), _tasks(), list(_batches(False)), device=CPU, split="val", warn=False)
    assert labelled["reg/mae"] == pytest.approx(2.0) and not caplog.records


def test_results_json_writes_missing_as_null_and_stays_strict_json(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, {"val/reg/mae": math.nan, "val/cls/accuracy": 0.5},
                  monitor={"key": "val/reg/mae", "value": math.nan},
                  robustness={"metrics": {"val/reg/mae": [1.0, math.nan]}, "auc": {"val/reg/mae": math.inf}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert payload["metrics"] == {"val/cls/accuracy": 0.5, "val/reg/mae": None}
    assert payload["monitor"]["value"] is None
    assert payload["robustness"] == {"metrics": {"val/reg/mae": [1.0, None]}, "auc": {"val/reg/mae": None}}


def test_printed_table_shows_a_missing_metric_as_a_dash():
    tasks = _tasks()
    lines = results_table(tasks, {"val": {"cls/accuracy": 0.5, "cls/macro_f1": 0.25, "reg/mae": math.nan,
                                          "reg/rmse": math.nan}}).splitlines()
    assert lines[-2].split() == ["reg", "mae", "↓", "–"] and lines[-1].split() == ["reg", "rmse", "↓", "–"]


# ----------------------------------------------------------------------------------------- monitor


def test_a_nan_monitor_value_is_never_best_nor_counts_toward_patience(caplog):
    monitor = Monitor("val/reg/mae", "auto", _tasks(), min_delta=0.0, patience=2)
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        assert monitor.update(1, monitor.value({"reg/mae": math.nan})) is False  # first epoch: still no best
        assert monitor.best_epoch is None and monitor.best_value is None
        assert monitor.update(2, monitor.value({"reg/mae": 2.0})) is True
        for epoch in (3, 4, 5):
            assert monitor.update(epoch, math.nan) is False
    assert (monitor.best_epoch, monitor.best_value, monitor.epochs_since_best) == (2, -2.0, 0)
    assert not monitor.should_stop()  # three unmeasured epochs are not three epochs without improvement
    monitor.update(6, -3.0)
    monitor.update(7, -3.0)
    assert monitor.should_stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("val/reg/mae is NaN") and "never best" in warnings[0]


def test_auto_monitor_averages_over_the_measured_main_tasks_only(caplog):
    monitor = Monitor("auto", "auto", _tasks(), min_delta=0.0, patience=None)
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        # scale-free: relative to each metric's first measurement (cls: 0.75; reg: 2.0, first seen below)
        assert monitor.value({"cls/accuracy": 0.75, "reg/mae": math.nan}) == 0.0
        assert monitor.value({"cls/accuracy": 0.5, "reg/mae": 2.0}) == pytest.approx((-0.25 / 0.75 + 0.0) / 2)
        assert math.isnan(monitor.value({"cls/accuracy": math.nan, "reg/mae": math.nan}))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "nothing to measure for reg" in warning and "averages over 1 other task" in warning


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def unlabelled_right(tmp_path_factory):
    """Two tiny runs where `right` has no label in any split: monitor auto, and monitor val/right/accuracy
    (NaN at every epoch)."""
    root = tmp_path_factory.mktemp("unlabelled")
    proc = run_cli("train", "-m", *TINY, "trainer.max_epochs=2", "data.label_fraction.right=0",
                   "data.label_fraction_splits=[train,val,test]", "trainer.monitor=auto,val/right/accuracy",
                   f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "sweep", proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_split_without_labels_for_a_task_is_written_as_null(unlabelled_right):
    sweep, output = unlabelled_right
    for job in ("0", "1"):
        metrics = read_results(sweep / job)
        for split in ("val", "test"):
            assert metrics[f"{split}/right/accuracy"] is None and metrics[f"{split}/right/macro_f1"] is None
            assert metrics[f"{split}/right/loss"] is None
            assert 0.0 <= metrics[f"{split}/left/accuracy"] <= 1.0
        rows = read_metrics_csv(sweep / job / "metrics.csv")
        val_rows = [r for r in rows if r["split"] == "val"]
        assert len(val_rows) == 2 and all("right/accuracy" not in r and "left/accuracy" in r for r in val_rows)
    for split in ("val", "test"):
        assert f"{split} split: nothing to measure for task(s) 'right'" in output
    table_rows = [line.split() for line in output.splitlines() if line.startswith("right ")]
    assert ["right", "accuracy", "↑", "–", "–"] in table_rows
    assert output.count("val split: nothing to measure") == 2  # once per run, not once per epoch
    assert "right/accuracy –  right/macro_f1 –" in output  # the epoch log line


@pytest.mark.e2e
def test_monitor_never_measured_falls_back_to_the_last_epoch(unlabelled_right):
    sweep, output = unlabelled_right
    auto = json.loads((sweep / "0" / "results.json").read_text())
    assert auto["monitor"]["key"] == "val/monitor" and auto["monitor"]["value"] is not None  # left alone
    nan = json.loads((sweep / "1" / "results.json").read_text())
    assert nan["monitor"] == {"key": "val/right/accuracy", "value": None}
    assert nan["best_epoch"] == 2 and (sweep / "1" / "checkpoints" / "best.pt").is_file()
    assert "val/right/accuracy was NaN at every epoch" in output and "averages over 1 other task" in output


@pytest.mark.e2e
def test_eval_of_a_split_without_labels_writes_null(unlabelled_right, tmp_path):
    sweep, _ = unlabelled_right
    proc = run_cli("eval", f"checkpoint={sweep / '0' / 'checkpoints' / 'best.pt'}", "split=val",
                   f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_results(tmp_path / "eval")["val/right/macro_f1"] is None
    assert "val split: nothing to measure for task(s) 'right'" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_report_of_runs_without_a_measurement_shows_a_dash(unlabelled_right, tmp_path, capsys):
    from mtlrun.cli import main as cli_main

    sweep, _ = unlabelled_right
    cli_main(["report", str(sweep), "--out", str(tmp_path), "--split", "val"])
    md = (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| trainer.monitor=")]
    assert len(rows) == 2 and all(row.endswith("| – | – |") for row in rows), rows
    assert "–: no measurement" in md
