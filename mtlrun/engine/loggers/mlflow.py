"""`logger=mlflow`: an MLflow run with the resolved config as parameters, the metrics, and the run dir.

The store is local, no server: by default a SQLite database in <run dir>/mlflow/mlflow.db (mlflow 3 refuses
its old file store unless told otherwise), artifacts next to it. `tracking_uri` picks another store, e.g.
one shared by every run: `logger.mlflow.tracking_uri=sqlite:///$PWD/outputs/mlflow.db`, then
`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`. Needs `pip install "mtlrun[mlflow]"`."""

from __future__ import annotations

import time
from pathlib import Path

from mtlrun.engine.loggers.base import Logger, flatten, require

STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
MAX_PARAM = 6000  # mlflow's limit on a parameter's value


class MLflowLogger(Logger):
    def __init__(self, tracking_uri: str | None = None, experiment: str = "mtlrun", run_name: str | None = None):
        require("mlflow", "mlflow", "mlflow")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.client = self.run_id = self.run_dir = None

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        store = run_dir / "mlflow"
        uri = self.tracking_uri
        if not uri:
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(store / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            self.experiment, artifact_location=None if self.tracking_uri else (store / "artifacts").resolve().as_uri())
        run_dir = self.run_dir = run_dir.resolve()
        tags = {"mtlrun.run_dir": str(run_dir), "mlflow.note.content": f"run dir: {run_dir}"}
        run = self.client.create_run(experiment_id, run_name=self.run_name or run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            self.client.log_artifact(self.run_id, str(config_file))

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        for name in ("metrics.csv", "results.json"):  # the run's records, as far as it got
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, STATUS[status])
