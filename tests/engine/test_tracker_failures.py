"""Experiment trackers that fail (mtlrun/engine/logger/): an unreachable or unusable store stops the run in
one bounded attempt with one line (exit 1), or with `on_error=continue` the run trains on without it; a
tracker failing mid-run never stops training; a resumed run continues its tracker runs (their ids are in the
checkpoint); parallel jobs sharing one MLflow SQLite store do not race creating it or its experiment."""

from __future__ import annotations

import logging
import os
import re
import threading
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

from contracts import TINY, compose_config, free_port, run_cli
from mtlrun.build import build_loggers, build_trainer
from mtlrun.distributed import DistInfo
from mtlrun.engine.logger.base import Logger, Trackers, check_trackers, reason
from mtlrun.engine.trainer_state import restore_trainer, trainer_state
from mtlrun.errors import TrackerError, UsageError


class Failing(Logger):
    """A tracker whose `fail_at` call ("check", "start", "log" or "close") raises `error`; records its calls."""

    def __init__(self, fail_at: str, on_error: str = "fail", error: Exception | None = None, option="flaky"):
        self.fail_at, self.on_error, self.option = fail_at, on_error, option
        self.error = error or ConnectionRefusedError(111, "Connection refused")
        self.calls = []

    def _call(self, name):
        self.calls.append(name)
        if name == self.fail_at:
            raise self.error

    def check(self, run_dir):
        self._call("check")

    def start(self, config, run_dir, step):
        self._call("start")

    def log(self, values, step, axis):
        self._call("log")

    def close(self, status):
        self._call("close")


# ------------------------------------------------------------------------- at start-up: fail or continue
@pytest.mark.parametrize("stage", ["check", "start"])
def test_a_tracker_that_cannot_start_stops_the_run_with_one_line(stage, tmp_path):
    logger = Failing(stage)
    with pytest.raises(TrackerError) as info:
        with Trackers([logger]) as trackers:
            check_trackers([logger], tmp_path)
            trackers.start({}, tmp_path, 0)
    assert str(info.value) == ("logger=flaky: cannot be started: Connection refused "
                               "(logger.flaky.on_error=continue trains on without it)")
    assert info.value.exit_code == 1


@pytest.mark.parametrize("stage", ["check", "start"])
def test_on_error_continue_trains_on_without_the_tracker(stage, tmp_path, caplog):
    broken, fine = Failing(stage, on_error="continue"), Failing("never", option="fine")
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        loggers = check_trackers([broken, fine], tmp_path)
        with Trackers(loggers) as trackers:
            trackers.start({}, tmp_path, 0)
            trackers.log_step({"a": 1.0}, 2)
    assert broken.calls == (["check"] if stage == "check" else ["check", "start"])  # dropped, never closed
    assert fine.calls == ["check", "start", "log", "close"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("logger=")] == [
        "logger=flaky: cannot be started: Connection refused; training goes on without it "
        "(logger.flaky.on_error=continue)"]


def test_on_error_must_be_fail_or_continue():
    with pytest.raises(UsageError, match="^logger.csv.on_error=maybe: must be one of fail, continue$"):
        build_loggers(compose_config([*TINY, "logger=[csv]", "logger.csv.on_error=maybe"]))
    assert build_loggers(compose_config([*TINY, "logger=[csv]"]))[0].option == "csv"  # named by its key


def test_reason_finds_the_os_error_inside_a_message():
    wrapped = RuntimeError("API request to http://x failed with exception HTTPConnectionPool(...): Max retries "
                           "exceeded (Caused by NewConnectionError(\"...: [Errno 111] Connection refused\"))")
    assert reason(wrapped) == "Connection refused"
    assert reason(PermissionError(13, "Permission denied", "/ro/x.db")) == "Permission denied: /ro/x.db"
    assert reason(ValueError("first\nsecond")) == "first"


# ----------------------------------------------------------------------------------- mid-run failures
def test_a_tracker_failing_mid_run_is_turned_off_and_training_goes_on(tmp_path, caplog):
    cfg = compose_config([*TINY, "data.n_train=64", "data.n_val=32", "trainer.max_epochs=1",
                          "trainer.log_every_n_steps=1", "logger=[]"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    broken, closing, fine = Failing("log"), Failing("close", option="closing"), Failing("never", option="fine")
    trainer.trackers = Trackers([broken, closing, fine])
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        with trainer.trackers:
            trainer.fit()
    assert trainer.epoch == 1 and (tmp_path / "checkpoints" / "last.pt").is_file()  # the whole run, saved
    assert broken.calls == ["start", "log"]  # off after its first failure, not even closed
    assert fine.calls.count("log") == 2 + 2 and fine.calls[-1] == "close"  # 2 steps, a train and a val row
    assert closing.calls[-1] == "close"
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("logger=")]
    assert warnings == ["logger=flaky: logging failed at step 1 (Connection refused); it is turned off for the "
                        "rest of the run, training goes on",
                        "logger=closing: closing failed (Connection refused); the run's own records "
                        "(checkpoints, metrics.csv) do not depend on it"]


# ------------------------------------------------------------------------------------------- MLflow
def mlflow_logger(uri=None, **kwargs):
    pytest.importorskip("mlflow")
    from mtlrun.engine.logger.mlflow import MLflowLogger

    return MLflowLogger(tracking_uri=uri, **kwargs)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> Path:
    """One MLflow SQLite store for this module's tests (each its own experiment): creating one takes seconds."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates its tables
    return db


def test_an_unreachable_mlflow_server_is_asked_once_and_named(tmp_path, monkeypatch):
    logger = mlflow_logger(uri := f"http://127.0.0.1:{free_port()}")  # nothing listens there
    import urllib3.util.connection as connection

    attempts, connect = [], connection.create_connection
    monkeypatch.setattr(connection, "create_connection", lambda *a, **k: attempts.append(a) or connect(*a, **k))
    with pytest.raises(TrackerError) as info:
        check_trackers([logger], tmp_path)
    assert str(info.value) == (f"logger=mlflow: cannot use the MLflow tracking store {uri}: Connection refused "
                               f"(logger.mlflow.on_error=continue trains on without it)")
    assert len(attempts) == 1  # MLflow alone retries 7 times over 254 s
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the bound is for the probe only


@pytest.mark.parametrize("store", ["not a database", "read-only folder"])
def test_an_unusable_sqlite_store_fails_at_once(store, tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    if store == "not a database":
        db.write_text("hello")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        db.parent.chmod(0o555)
    logger = mlflow_logger(f"sqlite:///{db}")
    try:
        with pytest.raises(TrackerError, match=rf"^logger=mlflow: cannot use the MLflow tracking store "
                                               rf"sqlite:///{re.escape(str(db))}: (file is not a database|"
                                               rf"Permission denied)"):
            check_trackers([logger], tmp_path)  # MLflow alone retries such a file for about 100 s
    finally:
        db.parent.chmod(0o755)
    assert db.read_text() == "hello" if store == "not a database" else not db.exists()


def test_an_mlflow_store_uri_mlflow_refuses_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"^logger=mlflow: the MLflow tracking store foo://bar refuses it: "):
        check_trackers([mlflow_logger("foo://bar")], tmp_path)


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, sqlite_store, caplog):
    uri = f"sqlite:///{sqlite_store}"
    first = mlflow_logger(uri, experiment="resumed")
    with Trackers([first]) as trackers:
        trackers.start({"optim": {"lr": 0.1}}, tmp_path, 0)
        trackers.log_step({"loss": 1.0}, 2)
        ids = trackers.run_ids()
        trackers.close("killed")
    assert ids == {"mlflow": first.run_id}
    resumed = mlflow_logger(uri, experiment="resumed")
    with Trackers([resumed]) as trackers:
        trackers.resume_from(ids)
        trackers.start({"optim": {"lr": 0.1}, "trainer": {"max_epochs": 3}}, tmp_path, 2)  # a new key: fine
        trackers.log_step({"loss": 0.5}, 4)
    client = resumed.client
    run = client.get_run(first.run_id)
    assert resumed.run_id == first.run_id and run.info.experiment_id == resumed.experiment_id
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_step/loss")] == \
        [(2, 1.0), (4, 0.5)]
    assert run.data.params == {"optim.lr": "0.1", "trainer.max_epochs": "3"}
    # a run the store does not have (another run dir's store) or a crafted id: a new run
    for ids in ({"mlflow": "0123456789abcdef0123456789abcdef"}, {"mlflow": "../../x"}, {"mlflow": 3}, "x"):
        other = mlflow_logger(uri, experiment="resumed")
        with Trackers([other]) as trackers:
            trackers.resume_from(ids)
            with caplog.at_level(logging.WARNING, logger="mtlrun"):
                trackers.start({}, tmp_path, 2)
        assert other.run_id != first.run_id
    assert "the checkpoint's MLflow run 0123456789abcdef0123456789abcdef is not in" in caplog.text


def test_the_checkpoint_carries_the_tracker_run_ids_as_plain_strings(tmp_path):
    cfg = compose_config([*TINY, "data.n_train=32", "data.n_val=32", "logger=[]"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    tracked, untracked = Failing("never", option="mlflow"), Failing("never", option="csv")
    tracked.run_id = "a1b2c3"
    trainer.trackers = Trackers([tracked, untracked])
    torch.save(trainer_state(trainer), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["trackers"] == {"mlflow": "a1b2c3"}
    again = build_trainer(cfg, tmp_path, dist=DistInfo())
    again.trackers = Trackers([resumed := Failing("never", option="mlflow")])
    restore_trainer(again, state)
    assert resumed.run_id == "a1b2c3"


def test_a_lost_experiment_race_takes_the_experiment_the_other_job_created(sqlite_store):
    from mlflow.tracking import MlflowClient

    from mtlrun.engine.logger.mlflow import _experiment_id

    client = MlflowClient(tracking_uri=f"sqlite:///{sqlite_store}")
    theirs = client.create_experiment("raced")  # another job created it just after our look-up found nothing
    looked_up = []
    real = client.get_experiment_by_name
    client.get_experiment_by_name = lambda name: real(name) if looked_up.append(name) or len(looked_up) > 1 else None
    assert _experiment_id(client, "raced", None) == theirs


def test_jobs_sharing_a_sqlite_store_take_turns_opening_it(tmp_path, sqlite_store):
    import fcntl

    logger = mlflow_logger(f"sqlite:///{sqlite_store}", experiment="turns")
    with open(f"{sqlite_store}.lock", "w") as held:  # another job is creating the store's tables
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=logger.check, args=(tmp_path,))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and logger.client is None  # it waits its turn
    waiting.join()
    assert logger.experiment_id is not None


def _open_shared_store(db: str, barrier) -> None:
    from mtlrun.engine.logger.mlflow import MLflowLogger

    logger = MLflowLogger(tracking_uri=f"sqlite:///{db}")
    barrier.wait()
    logger.check(Path(db).parent)
    logger.start({"seed": 0}, Path(db).parent, 0)
    logger.close("finished")


@pytest.mark.exhaustive  # 4 processes importing MLflow: ~20 s of CPU. Without the lock 3 of 4 failed here
@pytest.mark.e2e
def test_parallel_jobs_create_one_sqlite_store_and_experiment(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    spawn = get_context("spawn")
    barrier = spawn.Barrier(4)
    jobs = [spawn.Process(target=_open_shared_store, args=(str(tmp_path / "mlflow.db"), barrier)) for _ in range(4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert [job.exitcode for job in jobs] == [0] * 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "mtlrun"]
    assert len(client.search_runs([experiment.experiment_id])) == 4


# -------------------------------------------------------------------------------------------- wandb
@pytest.mark.e2e  # wandb starts its service process
def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from mtlrun.engine.logger.wandb import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    first = WandbLogger()
    with Trackers([first]) as trackers:
        trackers.start({"optim": {"lr": 0.1}}, tmp_path, 0)
        ids = trackers.run_ids()
    resumed = WandbLogger()
    with Trackers([resumed]) as trackers:
        trackers.resume_from(ids)
        trackers.start({"optim": {"lr": 0.1}}, tmp_path, 2)
    assert ids == {"wandb": first.run_id} and resumed.run_id == first.run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{first.run_id}*"))) == 2  # `wandb sync`: one run


# ---------------------------------------------------------------------------------------- the command
@pytest.mark.e2e
def test_train_with_an_unreachable_mlflow_server_exits_1_with_one_line(tmp_path):
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("train", *TINY, "logger=[mlflow]", f"logger.mlflow.tracking_uri={uri}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"error: logger=mlflow: cannot use the MLflow tracking store {uri}: Connection "
                                   f"refused (logger.mlflow.on_error=continue trains on without it)")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before the model was built
