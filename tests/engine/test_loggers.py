"""Experiment trackers (`logger=[...]`, mtlrun/engine/logger/): what a run writes to TensorBoard, MLflow,
wandb and steps.csv, read back and compared with metrics.csv; the Trainer's calls into the tracker API; the
rank-0 guard; a missing package as a usage error; a checkpoint never choosing the trackers."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from contracts import TINY, compose_config, run_cli
from mtlrun.build import build_loggers, build_trainer
from mtlrun.distributed import DistInfo
from mtlrun.engine.logger.base import Logger, Trackers, flatten
from mtlrun.diagnostics.gradients import grad_norm
from mtlrun.engine.logger.csv import CSVLogger
from mtlrun.engine.records import read_metrics_csv
from mtlrun.engine.signals import TrainingInterrupted
from mtlrun.errors import UsageError
from mtlrun.trust import check_checkpoint_config, without_trackers

TASKS = ("left", "right")
# 256 samples / batch 32 = 8 steps an epoch, logged every 2 steps: 4 windows of 2 steps per epoch
RUN = [*TINY, "trainer.max_epochs=2", "trainer.log_every_n_steps=2"]
STEPS_PER_EPOCH, LOG_EVERY = 8, 2


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=2e-5, abs_tol=1e-7)  # metrics.csv keeps 6 significant digits


# ------------------------------------------------------------------------- one CLI run with three trackers
@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One run with every tracker whose package is installed (csv always: a plain dev install has only that;
    the tests of the others skip there)."""
    root = tmp_path_factory.mktemp("tracked")
    loggers = ",".join(["csv", *(name for name in ("tensorboard", "mlflow") if importlib.util.find_spec(name))])
    proc = run_cli("train", *RUN, f"logger=[{loggers}]", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "run"


def epoch_rows(run_dir: Path, split: str) -> list[dict]:
    return [r for r in read_metrics_csv(run_dir / "metrics.csv") if r["split"] == split]


@pytest.mark.e2e
def test_tensorboard_holds_metrics_csv_and_the_steps(tracked_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for split in ("train", "val", "test"):
        rows = epoch_rows(tracked_run, split)
        keys = [k for k in rows[0] if k not in ("epoch", "split", "step")]
        assert keys and {f"{split}/{k}" for k in keys} <= tags
        for key in keys:
            logged = [(e.step, e.value) for e in events.Scalars(f"{split}/{key}")]
            assert [s for s, _ in logged] == [r["epoch"] for r in rows], key
            assert all(close(v, r[key]) for (_, v), r in zip(logged, rows)), (key, logged, rows)
    step_tags = {f"train_step/{k}" for t in TASKS for k in (f"{t}/loss", f"{t}/weight")} | \
        {"train_step/objective", "train_step/lr", "train_step/grad_norm"}
    assert step_tags <= tags
    steps = list(range(LOG_EVERY, 2 * STEPS_PER_EPOCH + 1, LOG_EVERY))
    assert [e.step for e in events.Scalars("train_step/grad_norm")] == steps
    assert all(e.value > 0 and math.isfinite(e.value) for e in events.Scalars("train_step/grad_norm"))
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    lr = OmegaConf.load(tracked_run / "config.yaml").optim.lr
    assert "optim:" in text and f"lr: {lr}" in text  # the resolved config, as text


@pytest.mark.e2e
def test_mlflow_store_holds_the_config_and_metrics_csv(tracked_run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mtlrun")
    (run,) = client.search_runs([experiment.experiment_id])
    config = OmegaConf.load(tracked_run / "config.yaml")
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(config.optim.lr)
    assert run.data.params["trainer.max_epochs"] == "2" and run.data.params["data.n_train"] == "256"
    assert run.data.tags["mtlrun.run_dir"] == str(tracked_run.resolve())
    for split in ("train", "val", "test"):
        rows = epoch_rows(tracked_run, split)
        for key in ("left/accuracy", "right/macro_f1") if split != "train" else ("objective", "left/weight"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{split}/{key}"))
            assert [s for s, _ in history] == [r["epoch"] for r in rows]
            assert all(close(v, r[key]) for (_, v), r in zip(history, rows)), (key, history, rows)
    assert len(client.get_metric_history(run.info.run_id, "train_step/lr")) == 2 * STEPS_PER_EPOCH // LOG_EVERY
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "results.json"} <= artifacts


@pytest.mark.e2e
def test_steps_csv_holds_the_means_since_the_last_log_step(tracked_run):
    steps = read_metrics_csv(tracked_run / "steps.csv")
    assert [r["step"] for r in steps] == list(range(LOG_EVERY, 2 * STEPS_PER_EPOCH + 1, LOG_EVERY))
    assert set(steps[0]) == {"step", "left/loss", "right/loss", "left/weight", "right/weight", "objective", "lr",
                             "grad_norm"}
    # each row is the mean over its own window of equal size, so an epoch's windows average to the epoch mean
    per_epoch = STEPS_PER_EPOCH // LOG_EVERY
    for epoch, row in enumerate(epoch_rows(tracked_run, "train")):
        window = steps[epoch * per_epoch:(epoch + 1) * per_epoch]
        for key in ("left/loss", "objective"):
            assert close(sum(r[key] for r in window) / per_epoch, row[key]), key
        assert len({r["objective"] for r in window}) == per_epoch  # not one running mean repeated


@pytest.mark.e2e
def test_resume_takes_the_trackers_of_its_own_command_line(tracked_run, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")  # the tracked run then logged to mlflow too, which the resume leaves out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    shutil.copytree(tracked_run, run)
    (run / "mlflow" / "mlflow.db").unlink()
    proc = run_cli("train", f"resume={run / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=3",
                   "logger=[csv,tensorboard]", cwd=tmp_path)  # the checkpoint's config lists mlflow too
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(OmegaConf.load(run / "config.yaml").logger) == ["csv", "tensorboard"]
    assert not (run / "mlflow" / "mlflow.db").exists()
    steps = list(range(LOG_EVERY, 3 * STEPS_PER_EPOCH + 1, LOG_EVERY))
    assert [r["step"] for r in read_metrics_csv(run / "steps.csv")] == steps  # continued, nothing twice
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("train_step/objective")] == steps
    rows = epoch_rows(run, "val")
    logged = events.Scalars("val/left/accuracy")
    assert [e.step for e in logged] == [1, 2, 3] and all(close(e.value, r["left/accuracy"])
                                                          for e, r in zip(logged, rows))


# ---------------------------------------------------------------------------------- in-process: the API
class Recording(Logger):
    def __init__(self):
        self.calls = []

    def start(self, config, run_dir, step):
        self.calls.append(("start", run_dir, step, config["optim"]["lr"]))

    def log(self, values, step, axis):
        self.calls.append(("log", axis, step, dict(values)))

    def close(self, status):
        self.calls.append(("close", status))


def tiny_trainer(tmp_path, *overrides):
    cfg = compose_config([*TINY, "data.n_train=128", "data.n_val=64", "trainer.max_epochs=2",
                          "trainer.log_every_n_steps=2", "logger=[]", *overrides])
    return build_trainer(cfg, tmp_path, dist=DistInfo())


def test_trainer_calls_the_tracker_api_with_the_steps_and_epochs(tmp_path, monkeypatch):
    import mtlrun.engine.trainer as trainer_module

    measured = []
    monkeypatch.setattr(trainer_module, "grad_norm", lambda *a: measured.append(1) or torch.tensor(2.5))
    trainer, recording = tiny_trainer(tmp_path), Recording()
    trainer.trackers = Trackers([recording])
    with trainer.trackers:
        trainer.fit()
    calls = recording.calls
    assert calls[0] == ("start", tmp_path, 0, trainer.config["optim"]["lr"]) and calls[-1] == ("close", "finished")
    step_logs = [c for c in calls if c[0] == "log" and c[1] == "step"]
    assert [c[2] for c in step_logs] == [2, 4, 6, 8]  # 4 steps an epoch, every second one
    assert len(measured) == 4  # the gradient norm is measured on log steps only
    expected = {f"train_step/{t}/{k}" for t in TASKS for k in ("loss", "weight")} | \
        {"train_step/objective", "train_step/lr", "train_step/grad_norm"}
    assert all(set(c[3]) == expected and c[3]["train_step/grad_norm"] == 2.5 for c in step_logs)
    epoch_logs = [c for c in calls if c[0] == "log" and c[1] == "epoch"]
    assert [c[2] for c in epoch_logs] == [1, 1, 2, 2]  # train and val rows of each epoch
    for (_, _, epoch, values), row in zip(epoch_logs, trainer.history):
        assert values == {f"{row['split']}/{k}": v for k, v in row.items() if k not in ("epoch", "split", "step")}
    assert {"val/left/accuracy", "val/monitor", "train/lr", "train/left/loss"} <= set(epoch_logs[0][3]) | \
        set(epoch_logs[1][3])


def test_grad_norm_is_what_clipping_measures(tmp_path):
    trainer = tiny_trainer(tmp_path, "trainer.grad_clip=1000.0")
    trainer.trackers = Trackers([Recording()])
    batch = next(iter(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)))
    before_step = []  # the norm of the gradients the optimizer is about to apply (1000 clips nothing)
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: before_step.append(grad_norm(optimizer)))
    trainer.step([batch])
    torch.testing.assert_close(trainer.grad_norm, before_step[0])


@pytest.mark.parametrize("error, status", [(None, "finished"), (RuntimeError("x"), "failed"),
                                           (KeyboardInterrupt(), "killed"), (TrainingInterrupted(2, None), "killed")])
def test_trackers_close_with_the_run_outcome(tmp_path, error, status):
    recording = Recording()
    with pytest.raises(type(error)) if error else contextlib.nullcontext():
        with Trackers([recording]) as trackers:
            trackers.start({"optim": {"lr": 1}}, tmp_path, 0)
            if error:
                raise error
    assert recording.calls == [("start", tmp_path, 0, 1), ("close", status)]


def test_only_rank_0_starts_and_writes_trackers(tmp_path):
    recording = Recording()
    with Trackers([recording], is_main=False) as trackers:  # a DDP rank > 0
        assert not trackers.active
        trackers.start({}, tmp_path, 0)
        trackers.log_step({"a": 1.0}, 1)
        trackers.log_rows([{"epoch": 1, "split": "val", "step": 1, "a": 1.0}])
    assert recording.calls == []


def test_csv_logger_on_resume_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    logger = CSVLogger()
    logger.start({}, tmp_path, 0)
    for step in (2, 4, 6):
        logger.log({"train_step/a": float(step)}, step, "step")
    logger.log({"val/a": 1.0}, 1, "epoch")  # per epoch: metrics.csv's, not this file's
    resumed = CSVLogger()
    resumed.start({}, tmp_path, 4)
    resumed.log({"train_step/a": 6.5}, 6, "step")
    assert read_metrics_csv(tmp_path / "steps.csv") == [{"step": 2, "a": 2.0}, {"step": 4, "a": 4.0},
                                                         {"step": 6, "a": 6.5}]


@pytest.mark.parametrize("package", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_tracker_package_is_a_usage_error_naming_the_extra(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec: not installed
    with pytest.raises(UsageError, match=rf'logger={package}: needs the {package} package.*pip install '
                                         rf'"mtlrun\[{package}\]"'):
        build_loggers(compose_config([*TINY, f"logger=[csv,{package}]"]))


def test_logger_group_composes_several_at_once_and_none():
    cfg = compose_config([*TINY, "logger=[csv,tensorboard,mlflow,wandb]"])
    assert list(cfg.logger) == ["csv", "tensorboard", "mlflow", "wandb"]
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.mlflow.tracking_uri is None
    assert [type(x).__name__ for x in build_loggers(compose_config(TINY))] == ["CSVLogger"]  # the default
    assert build_loggers(compose_config([*TINY, "logger=[]"])) == []


def test_a_checkpoint_never_chooses_the_trackers():
    # a checkpoint's `logger` section is never built (resume takes this command line's), so it is not checked
    config = OmegaConf.to_container(compose_config([*TINY, "logger=[csv,tensorboard]"]), resolve=True)
    check_checkpoint_config(config, [], "checkpoint=x")
    config["logger"]["evil"] = {"_target_": "os.system", "command": "echo"}
    check_checkpoint_config(config, [], "checkpoint=x")
    assert "logger" not in without_trackers(config) and without_trackers(config)["optim"] == config["optim"]
    config["optim"]["_target_"] = "os.system"
    with pytest.raises(UsageError, match="optim._target_=os.system"):
        check_checkpoint_config(config, [], "checkpoint=x")


def test_flatten_gives_dotted_keys():
    assert flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "resume": None, "e": {}}) == \
        {"optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "resume": "None", "e": "{}"}


@pytest.mark.e2e  # wandb starts its service process
def test_wandb_offline_leaves_its_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from mtlrun.engine.logger.wandb import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: the logger's own default is offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Trackers([WandbLogger()]) as trackers:
        trackers.start({"optim": {"lr": 0.1}}, tmp_path, 0)
        trackers.log_step({"a/loss": 1.0}, 2)
        trackers.log_rows([{"epoch": 1, "split": "val", "step": 2, "a/accuracy": 0.5}])
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` uploads
    records = run_file.read_bytes()  # protobuf records: the keys are stored as plain strings
    for key in (b"train_step/a/loss", b"val/a/accuracy", b"optim", b"run_dir", str(tmp_path).encode()):
        assert key in records, key
