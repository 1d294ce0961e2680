"""Cost of an experiment tracker per training step: `logger=[tensorboard]` against `logger=[]`.

What it measures: the wall time of one training epoch (`Trainer.step` over the loader's batches: loader, steps, and at every
`trainer.log_every_n_steps` the read-back, the gradient norm and the tracker's writes), divided by its
optimizer steps, for two Trainers built from the same config (`build_trainer`, as `mtlrun train` does) that
differ only in `logger`. Rounds alternate which side goes first; the figure is the median over rounds of
on/off. The default logs every 5 steps, five times as often as trainer.log_every_n_steps' default.

Run:  OMP_NUM_THREADS=1 python benchmarks/logger_overhead.py [--rounds R] [--log-every N] [--logger NAME]
Figures are wall-clock and noisy on a shared CPU; compare the ratio, not absolute speeds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.distributed import DistInfo

DATA = ["experiment=smoke", "data.batch_size=32", "trainer.device=cpu"]


def make_trainer(loggers: str, log_every: int, n_train: int, run_dir: Path):
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*DATA, f"data.n_train={n_train}", f"trainer.log_every_n_steps={log_every}",
                                          f"logger={loggers}"])
    trainer = build_trainer(cfg, run_dir, dist=DistInfo())
    trainer.trackers.start(trainer.config, run_dir, 0)
    return trainer


def epoch_seconds_per_step(trainer) -> float:
    start, step = time.perf_counter(), trainer.global_step
    for batch in trainer.data.train_loader(epoch=0, seed=trainer.seed, device=trainer.device):
        trainer.step([batch])  # the same epoch again next round
    return (time.perf_counter() - start) / (trainer.global_step - step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="rounds, alternating which side goes first (default 7)")
    p.add_argument("--log-every", type=int, default=5, help="trainer.log_every_n_steps (default 5)")
    p.add_argument("--logger", default="tensorboard", help="the tracker measured (default tensorboard)")
    p.add_argument("--n-train", type=int, default=1024, help="samples an epoch, 32 a batch (default 1024)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"off": make_trainer("[]", args.log_every, args.n_train, Path(tmp) / "off"),
                 "on": make_trainer(f"[{args.logger}]", args.log_every, args.n_train, Path(tmp) / "on")}
        for trainer in sides.values():
            epoch_seconds_per_step(trainer)  # warm-up
        times = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for side in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                times[side].append(epoch_seconds_per_step(sides[side]))
        sides["on"].trackers.close()
    ratios = [on / off for on, off in zip(times["on"], times["off"])]
    print(f"per step: off {statistics.median(times['off']) * 1e3:.2f} ms, on {statistics.median(times['on']) * 1e3:.2f}"
          f" ms ({sides['on'].global_step // args.log_every} log steps of {args.logger})")
    print(f"ratio on/off (median of {args.rounds} rounds): {statistics.median(ratios):.3f}  "
          f"[{', '.join(f'{r:.3f}' for r in ratios)}]")


if __name__ == "__main__":
    main()
