"""Cost of data=mixture per training step: sampling=all over two sources against one plain source.

What it measures: the wall time of `Trainer.step` over the train loader's batches (loading, placeholders for the
other source's tasks, forward, backward, optimizer step), divided by the steps, for Trainers built from the same
model, tasks (left, right, parity) and samples per step (`build_trainer`, as `mtlrun train` does):
- one: data=multidigits, one batch of B samples a step;
- all: data=mixture sampling=all, a batch of B/2 from each of two multidigits sources a step (two forwards);
- mixture_one: data=mixture with one source drawn per step (proportional), batches of B: the wrapper alone.
Rounds alternate the order of the sides; the figures are the medians over rounds of each side's time over one's.
A ratio near 1 says the mixture's loading and bookkeeping do not slow the step (`all` also runs two forwards of
half the batch, which costs a little more than one of the whole on a CPU).

Run:  OMP_NUM_THREADS=1 python benchmarks/mixture.py [--rounds R] [--steps N] [--batch B]
Figures are wall-clock and noisy on a shared CPU; compare the ratios, not absolute speeds.
"""

from __future__ import annotations

import argparse
import itertools
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

COMMON = ["tasks=from_data", "trainer.device=cpu", "logger=[]", "trainer.progress_bar=false"]


def sides(batch: int, n_train: int) -> dict[str, list[str]]:
    def source(name: str, size: int, seed: int) -> list[str]:
        return [f"data.sources.{name}.{k}={v}" for k, v in
                (("n_train", n_train), ("n_val", 8), ("n_test", 8), ("batch_size", size), ("seed", seed))]

    return {"one": ["data=multidigits", f"data.n_train={n_train}", "data.n_val=8", "data.n_test=8",
                    f"data.batch_size={batch}", "tasks.only=[left,right,parity]"],
            "all": ["data=mixture", "data.sampling=all", *source("big", batch // 2, 0),
                    *source("small", batch // 2, 1)],
            "mixture_one": ["data=mixture", "data.sampling=proportional", *source("big", batch, 0),
                            *source("small", batch, 1)]}


def make_trainer(overrides: list[str], run_dir: Path):
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*COMMON, *overrides])
    return build_trainer(cfg, run_dir, dist=DistInfo())


def seconds_per_step(trainer, steps: int, epoch: int) -> float:
    batches = itertools.islice(trainer.data.train_loader(epoch=epoch, seed=trainer.seed, device=trainer.device),
                               steps)
    start, done = time.perf_counter(), trainer.global_step
    for batch in batches:
        trainer.step([batch])
    return (time.perf_counter() - start) / (trainer.global_step - done)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="rounds, alternating the order of the sides (default 7)")
    p.add_argument("--steps", type=int, default=30, help="training steps a side times per round (default 30)")
    p.add_argument("--batch", type=int, default=64, help="samples a step, even (default 64)")
    args = p.parse_args()
    if args.batch < 2 or args.batch % 2:
        p.error(f"--batch={args.batch}: must be an even number >= 2 (sampling=all takes half from each source)")
    torch.set_num_threads(1)
    n_train = args.batch * (args.steps + 1)  # every round reads `steps` batches of one epoch
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: make_trainer(o, Path(tmp) / name) for name, o in sides(args.batch, n_train).items()}
        names = list(trainers)
        for name in names:
            seconds_per_step(trainers[name], 2, epoch=0)  # warm-up
        times = {name: [] for name in names}
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(seconds_per_step(trainers[name], args.steps, epoch=round_ + 1))
    print("per step: " + ", ".join(f"{n} {statistics.median(t) * 1e3:.2f} ms" for n, t in times.items())
          + f" ({args.batch} samples a step)")
    for name in ("all", "mixture_one"):
        ratios = [t / o for t, o in zip(times[name], times["one"])]
        print(f"ratio {name}/one (median of {args.rounds} rounds): {statistics.median(ratios):.3f}  "
              f"[{', '.join(f'{r:.3f}' for r in ratios)}]")


if __name__ == "__main__":
    main()
