"""Cost of exact gradient accumulation for gradient-level weightings: one optimizer step of
`trainer.accumulate=K` micro-batches, aggregated once per window (what mtlrun does), against aggregating
every micro-batch on its own (mtlrun before issue 16, which is not the step of the K times larger batch).

    OMP_NUM_THREADS=1 python benchmarks/accumulation_cost.py
    OMP_NUM_THREADS=1 python benchmarks/accumulation_cost.py --methods upgrad mgda --accumulate 4 --tasks 3

Model and data: those of weighting_cost.py (small CNN, hard sharing, multidigits, extra synthetic tasks).
One step = `Trainer.step` over a window of K pre-built micro-batches. The two
sides alternate round by round on the same model; the figure is the median over rounds of the time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from mtlrun.weighting.base import Weighting
from weighting_cost import digit_problem, make_trainer


def per_micro_batch(trainer) -> None:
    """The old behaviour: every micro-batch is the last of its window, so the aggregator sees it alone."""
    weighting = trainer.weighting
    weighting.start_micro_batch = lambda first, last: Weighting.start_micro_batch(weighting, first, True)


def timed(trainer, micro_batches, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(micro_batches)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["upgrad"])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="of one micro-batch")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    K, B = args.accumulate, args.batch_size
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s), {args.tasks} tasks, "
          f"accumulate {K} x batch {B}, {args.steps} steps x {args.rounds} rounds (alternating)\n")
    print(f"{'method':<10} {'grad_on':<15} {'s/step old':>10} {'s/step new':>10} {'new / old':>10}")
    data, tasks, model, micro = digit_problem(args.tasks, K, B)
    with tempfile.TemporaryDirectory() as run_dir:
        for method in args.methods:
            for grad_on in ("parameters", "representation"):
                overrides = [f"weighting={method}", f"weighting.grad_on={grad_on}", f"trainer.accumulate={K}"]
                new = make_trainer(model, tasks, data, overrides, run_dir)
                old = make_trainer(model, tasks, data, overrides, run_dir)
                per_micro_batch(old)
                sides = {"old": old, "new": new}
                for trainer in sides.values():  # warm-up
                    timed(trainer, micro, 1)
                times = {k: [] for k in sides}
                for r in range(args.rounds):
                    for k in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                        times[k].append(timed(sides[k], micro, args.steps))
                ratio = statistics.median(n / o for n, o in zip(times["new"], times["old"]))
                print(f"{method:<10} {grad_on:<15} {statistics.median(times['old']):>10.3f} "
                      f"{statistics.median(times['new']):>10.3f} {ratio:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
