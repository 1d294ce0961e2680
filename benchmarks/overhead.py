"""Overhead of mtlrun's training step versus a plain hand-written PyTorch loop.

What it measures: optimizer steps per second of
  * mtlrun: `trainer.step([batch])`, one optimizer step as `Trainer.fit` takes it with accumulate=1
    (the progress bar and the loader aside), on a Trainer built from the real default config
    (Hydra compose of configs/train.yaml, then `build_trainer`, the builder `mtlrun train` uses);
  * plain: `zero_grad; model(inputs); sum of F.cross_entropy; backward; AdamW.step; sched.step`, with its
    own torch.optim.AdamW (same hyperparameters) and the same LR schedule.
Both drive the SAME model object over the SAME pre-built list of batches (data loading is excluded), with
warm-up first, in one process. Rounds alternate the order (mtlrun first, then plain first, ...) so slow
drift of the machine cancels; the reported ratio is the median over rounds of mtlrun/plain. Target: >= 0.95.

Run:  python benchmarks/overhead.py [--steps N] [--rounds R] [--batch-size B] [--threads T]
Figures are wall-clock and noisy when other processes share the CPU; compare ratios, not absolute speeds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.instantiate import instantiate_node
from mtlrun.data.loading import to_device
from mtlrun.distributed import DistInfo
from mtlrun.engine.trainer import Trainer

TARGET = 0.95
N_BATCHES = 20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per side per round (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="rounds, alternating which side goes first (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side before measuring (default 5)")
    return p.parse_args()


def make_trainer(overrides: list[str], run_dir: str) -> tuple[Trainer, object]:
    """The mtlrun side, built by mtlrun.build.build_trainer as `mtlrun train` builds it (minus validation)."""
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "bench", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    return build_trainer(cfg, run_dir, dist=DistInfo()), cfg


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = [] if args.batch_size is None else [f"data.batch_size={args.batch_size}"]
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-") as run_dir:
        trainer, cfg = make_trainer(overrides, run_dir)
        model, device, tasks = trainer.model, trainer.device, trainer.task_names
        bs = trainer.data.batch_size

        # The plain side: its own AdamW (same hyperparameters) and LR schedule over the same model.
        hyper = {k: v for k, v in OmegaConf.to_container(cfg.optim).items() if not k.startswith("_")}
        plain_opt = torch.optim.AdamW(model.parameters(), **hyper)
        assert plain_opt.defaults == trainer.optimizer.defaults, "the config's optimizer is not this AdamW"
        plain_sched = instantiate_node(cfg.scheduler, "scheduler")(plain_opt, total_steps=trainer.total_steps)

        # A fixed list of training batches, shared by both sides; data loading is not timed.
        train_set = trainer.data.dataset("train")
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0)).tolist()
        batches = [to_device(train_set.__getitems__([order[(i * bs + j) % len(order)] for j in range(bs)]),
                           device) for i in range(N_BATCHES)]

        def mtlrun_step(batch):
            trainer.step([batch])

        def plain_step(batch):
            plain_opt.zero_grad(set_to_none=True)
            preds = model(batch["inputs"])
            loss = sum(F.cross_entropy(preds[t], batch["targets"][t]) for t in tasks)
            loss.backward()
            plain_opt.step()
            plain_sched.step()

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def run(step, n: int) -> float:
            """Steps per second over n steps, cycling through the shared batches."""
            sync()
            start = time.perf_counter()
            for i in range(n):
                step(batches[i % N_BATCHES])
            sync()
            return n / (time.perf_counter() - start)

        n_params = sum(p.numel() for p in model.parameters())
        print(f"mtlrun overhead benchmark: torch {torch.__version__}, device {device}, "
              f"threads {torch.get_num_threads()}")
        print(f"model {type(model).__name__}/{type(model.encoder).__name__} ({n_params:,} params), batch size "
              f"{bs}, precision {trainer.precision}, compile {bool(cfg.trainer.compile)}")
        print(f"{args.warmup} warm-up + {args.steps} timed steps per side per round, {args.rounds} rounds, "
              f"{N_BATCHES} pre-built batches", flush=True)

        model.train()
        sides = {"mtlrun": mtlrun_step, "plain": plain_step}
        for step in sides.values():
            run(step, args.warmup)

        rates: dict[str, list[float]] = {"mtlrun": [], "plain": []}
        for r in range(args.rounds):
            names = ["mtlrun", "plain"] if r % 2 == 0 else ["plain", "mtlrun"]
            for name in names:
                rates[name].append(run(sides[name], args.steps))
        trainer.check_nonfinite()  # since the last log step (step checks at those); a NaN would void the figures
        # both sides took the same number of steps, so their schedules must agree (same hyperparameters)
        assert plain_opt.param_groups[0]["lr"] == trainer.optimizer.param_groups[0]["lr"], "LR schedules differ"

    print()
    print(f"{'round':>5}  {'first':>6}  {'mtlrun steps/s':>14}  {'plain steps/s':>13}  {'mtlrun/plain':>12}")
    for r in range(args.rounds):
        m, p = rates["mtlrun"][r], rates["plain"][r]
        print(f"{r + 1:>5}  {'mtlrun' if r % 2 == 0 else 'plain':>6}  {m:>14.2f}  {p:>13.2f}  {m / p:>12.3f}")
    med_m, med_p = statistics.median(rates["mtlrun"]), statistics.median(rates["plain"])
    ratio = statistics.median(m / p for m, p in zip(rates["mtlrun"], rates["plain"]))
    print(f"{'median':>5}  {'':>6}  {med_m:>14.2f}  {med_p:>13.2f}")
    best = max(rates["mtlrun"]) / max(rates["plain"])
    print(f"best round mtlrun/plain: {best:.3f}  (fastest round of each side; less sensitive to other load)")
    verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
    print(f"ratio mtlrun/plain (median over rounds): {ratio:.3f}  target >= {TARGET}: {verdict}")


if __name__ == "__main__":
    main()
