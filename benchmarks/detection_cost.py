"""Training cost per step of a detection task: `experiment=scenes_det` against the same model without it.

Builds two Trainers from the real config (Hydra compose of configs/train.yaml, then `build_trainer`):
`tasks.only=[segmentation,depth]` and the same plus `detection`, and times `trainer.step([batch])` (one
optimizer step as `Trainer.fit` takes it) over the same pre-built batches, data loading excluded. Rounds
alternate which model goes first so slow drift of a shared machine cancels; the ratio reported is the median
over rounds of with / without. One intra-op thread unless --threads says otherwise.

Run:  OMP_NUM_THREADS=1 python benchmarks/detection_cost.py [--steps N] [--rounds R] [more overrides]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.distributed import DistInfo

TASKS = {"without": "[segmentation,depth]", "with": "[detection,segmentation,depth]"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="mtlrun train overrides added to experiment=scenes_det")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per round and model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trainers, folder = {}, tempfile.mkdtemp()
    for name, only in TASKS.items():
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="train", overrides=["experiment=scenes_det", "trainer.device=cpu",
                                                          f"data.n_train={32 * (args.steps + 1)}", "data.n_val=8",
                                                          "data.n_test=8", f"tasks.only={only}", *args.overrides])
        trainer = build_trainer(cfg, f"{folder}/{name}", dist=DistInfo())
        batches = list(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device))
        trainer.step([batches[0]])  # warm-up
        trainers[name] = (trainer, batches[1:args.steps + 1])
    seconds = {name: [] for name in trainers}
    for r in range(args.rounds):
        for name in (list(trainers) if r % 2 == 0 else list(reversed(trainers))):
            trainer, batches = trainers[name]
            start = time.perf_counter()
            for batch in batches:
                trainer.step([batch])
            seconds[name].append((time.perf_counter() - start) / len(batches))
    ratios = [w / wo for w, wo in zip(seconds["with"], seconds["without"])]
    for name in trainers:
        print(f"{name} detection: median {statistics.median(seconds[name]):.3f} s/step")
    print(f"with / without: median {statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
