"""`logger=tensorboard`: event files in <run dir>/tensorboard (`tensorboard --logdir outputs`), through
torch.utils.tensorboard. The resolved config goes in as hyperparameters (the HPARAMS tab) and as text, with
the run dir. Needs `pip install "mtlrun[tensorboard]"`."""

from __future__ import annotations

from pathlib import Path

import yaml

from mtlrun.engine.logger.base import Logger, flatten, require


class TensorBoardLogger(Logger):
    option = "tensorboard"

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30, on_error: str = "fail"):
        require("tensorboard", "tensorboard", "tensorboard")
        self.subdir, self.flush_secs, self.on_error = subdir, flush_secs, on_error
        self.writer = None

    def start(self, config: dict, run_dir: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: a resumed run hides the events a crashed run wrote after its checkpoint (at step `step`)
        self.writer = SummaryWriter(str(run_dir / self.subdir), purge_step=step + 1 if step else None,
                                    flush_secs=self.flush_secs)
        if step == 0:
            for summary in hparams(flatten(config), {}):  # in this run's own event file, not a sub-run
                self.writer.file_writer.add_summary(summary)
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block
            self.writer.add_text("run_dir", str(run_dir.resolve()))

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, status: str) -> None:
        self.writer.close()
