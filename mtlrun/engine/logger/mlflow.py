"""`logger=mlflow`: an MLflow run with the resolved config as parameters, the metrics, and the run dir.

The store is local, no server: by default a SQLite database in <run dir>/mlflow/mlflow.db (mlflow 3 refuses
its old file store unless told otherwise), artifacts next to it. `tracking_uri` picks another store, e.g.
one shared by every run: `logger.mlflow.tracking_uri=sqlite:///$PWD/outputs/mlflow.db`, then
`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`. Needs `pip install "mtlrun[mlflow]"`.

Before the model is built, `check` opens the store with a bounded probe: a server is asked once (no retries,
a 10 s timeout, where MLflow alone retries for minutes), a SQLite file is opened directly (MLflow retries an
unusable one for a minute and a half). Parallel sweep jobs sharing one SQLite store take turns creating it
and the experiment (a lock file next to it): two creating its tables at once fail ("duplicate column").
A resumed run continues its own MLflow run (its id is in the checkpoint)."""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from contextlib import closing, contextmanager
from pathlib import Path

from mtlrun.engine.logger.base import Logger, flatten, reason, require
from mtlrun.hub import environment
from mtlrun.errors import TrackerError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; jobs sharing a store there still recover from the experiment race
    fcntl = None

log = logging.getLogger("mtlrun")
STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
MAX_PARAM = 6000  # mlflow's limit on a parameter's value
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LOCK_WAIT_S = 300  # another job creating the shared store's tables: seconds, even on a loaded machine


class MLflowLogger(Logger):
    option = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "mtlrun", run_name: str | None = None,
                 on_error: str = "fail"):
        require("mlflow", "mlflow", "mlflow")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.on_error = on_error
        self.client = self.uri = self.experiment_id = self.run_dir = None

    def check(self, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        store = run_dir / "mlflow"
        self.uri = self.tracking_uri or f"sqlite:///{(store / 'mlflow.db').resolve()}"
        with self._failures("use"), environment(PROBE_HTTP), _store_lock(self.uri):
            _probe_sqlite(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            artifacts = None if self.tracking_uri else (store / "artifacts").resolve().as_uri()
            self.experiment_id = _experiment_id(self.client, self.experiment, artifacts)

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        from mlflow.entities import Param

        if self.client is None:
            self.check(run_dir)
        run_dir = self.run_dir = run_dir.resolve()
        with self._failures("start a run in"):
            logged = self._continue_run() if self.run_id else None
            if logged is None:
                tags = {"mtlrun.run_dir": str(run_dir), "mlflow.note.content": f"run dir: {run_dir}"}
                run = self.client.create_run(self.experiment_id, run_name=self.run_name or run_dir.name, tags=tags)
                self.run_id, logged = run.info.run_id, {}
            # a resumed run logs the parameters it did not have: MLflow refuses to change a logged value
            params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flatten(config).items() if k not in logged]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            config_file = run_dir / "config.yaml"
            if config_file.is_file():
                self.client.log_artifact(self.run_id, str(config_file))

    def _continue_run(self) -> dict | None:
        """The resumed run's parameters once it is RUNNING again; None if the store does not have it (resumed
        into another run dir, whose store is new, or another tracking_uri): then a new run is started."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning(f"logger={self.option}: the checkpoint's MLflow run {self.run_id} is not in {self.uri} "
                        f"(or was deleted): this run is logged as a new MLflow run")
            return None
        self.client.update_run(self.run_id, status="RUNNING")
        log.info(f"logger={self.option}: continuing MLflow run {self.run_id}")
        return dict(run.data.params)

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        for name in ("metrics.csv", "results.json"):  # the run's records, as far as it got
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, STATUS[status])

    @contextmanager
    def _failures(self, what: str):
        """MLflow's errors as one line naming the store: a value MLflow rejects (a URI scheme it does not
        know, its refused file store) is a config mistake; anything else an unusable store or server."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise TrackerError(f"cannot {what} the MLflow tracking store {self.uri}: {reason(exc)}") from exc
            raise UsageError(f"the MLflow tracking store {self.uri} refuses it: {reason(exc)}") from exc
        except (TrackerError, UsageError):
            raise
        except Exception as exc:  # sqlite3, SQLAlchemy, requests, OSError: whatever the store raises
            raise TrackerError(f"cannot {what} the MLflow tracking store {self.uri}: {reason(exc)}") from exc


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if it does not exist. Another job sharing the store may create it
    between our look-up and our create (MLflow then answers RESOURCE_ALREADY_EXISTS): theirs is ours."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///<path>` store (relative or, with a 4th slash, absolute)."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    return Path(path.split("?")[0]) if path and path != ":memory:" else None


def _probe_sqlite(uri: str) -> None:
    """Opens a SQLite store's file the way MLflow will, but once: MLflow retries an unusable one (a read-only
    folder, a file that is not a database) for about 100 s before its traceback."""
    path = _sqlite_path(uri)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent):  # SQLite writes its journal next to the database
        pass
    if path.exists():
        open(path, "r+b").close()  # writable, or PermissionError naming it
    with closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database"


@contextmanager
def _store_lock(uri: str):
    """Holds `<database>.lock` next to a SQLite store while it is opened (its tables created or migrated) and
    the experiment looked up or created: parallel jobs sharing the store take turns. Other stores: no lock."""
    path = _sqlite_path(uri)
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {path}.lock for {LOCK_WAIT_S} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock
