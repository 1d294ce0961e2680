"""`logger=wandb`: a Weights & Biases run, offline by default (nothing leaves the machine): its files go in
<run dir>/wandb/offline-run-*; `wandb sync <that dir>` uploads it later. `logger.wandb.mode=online` logs
live (after `wandb login`). The resolved config is the run's config. Needs `pip install "mtlrun[wandb]"`.

Online, wandb waits `init_timeout` seconds for its server (its own default is 90) before the run stops, or
goes on without it (`on_error=continue`). A resumed run continues its own wandb run (its id is in the
checkpoint; offline, a second offline-run-* folder with that id, which `wandb sync` uploads into it)."""

from __future__ import annotations

from pathlib import Path

from mtlrun.engine.logger.base import Logger, require

EXIT_CODE = {"finished": 0, "failed": 1, "killed": 1}


class WandbLogger(Logger):
    option = "wandb"

    def __init__(self, project: str = "mtlrun", mode: str = "offline", entity: str | None = None,
                 name: str | None = None, tags: list | None = None, on_error: str = "fail",
                 init_timeout: float = 30):
        require("wandb", "wandb", "wandb")
        self.project, self.mode, self.entity, self.name, self.tags = project, mode, entity, name, tags
        self.on_error, self.init_timeout = on_error, float(init_timeout)
        self.run = None

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        import wandb

        run_dir = run_dir.resolve()
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
                              name=self.name or run_dir.name, tags=list(self.tags or []), config=config,
                              notes=f"run dir: {run_dir}", id=self.run_id, resume="allow" if self.run_id else None,
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                                      init_timeout=self.init_timeout))
        self.run_id = self.run.id if self.mode != "disabled" else None  # disabled: a placeholder id
        self.run.summary["run_dir"] = str(run_dir)
        # two x-axes: per-step scalars against the optimizer step, per-epoch values against the epoch
        self.run.define_metric("step")
        self.run.define_metric("epoch")
        self.run.define_metric("train_step/*", step_metric="step")
        for split in ("train", "val", "test"):
            self.run.define_metric(f"{split}/*", step_metric="epoch")

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        self.run.log({**values, axis: step})

    def close(self, status: str) -> None:
        import wandb

        self.run.finish(exit_code=EXIT_CODE[status])
        wandb.teardown()  # waits for wandb's service to write the run out (finish alone may return before)
