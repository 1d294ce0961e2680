"""Cost of the gradient-conflict diagnostics (`trainer.conflict=true`) per training step.

Both sides are the same Trainer (built from the real config by mtlrun.build.build_trainer, as `mtlrun train`
builds it) stepping over the same pre-built batches; the "on" side has its ConflictMeter, which measures at
every `trainer.log_every_n_steps`-th step (default 25) as in a real run, the "off" side has none. Rounds
alternate which side goes first; the figure is the median over rounds of time(on) / time(off) per step.
Target: <= 1.05 at the default logging interval.

Run:  python benchmarks/diagnostics.py [--tasks multidigits_all] [--rounds R] [--threads T] [overrides...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from overhead import make_trainer  # benchmarks/overhead.py: the Trainer exactly as `mtlrun train` builds it
from mtlrun.data.loading import to_device
from mtlrun.diagnostics.conflict import ConflictMeter

TARGET = 1.05


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--windows", type=int, default=2, help="logging intervals per side per round (default 2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. tasks=multidigits_all weighting=uw")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-") as run_dir:
        trainer, cfg = make_trainer(list(args.overrides), run_dir)
        every = int(cfg.trainer.log_every_n_steps)
        steps = every * args.windows
        data = trainer.data.dataset("train")
        bs = trainer.data.batch_size
        batches = [to_device(data.__getitems__([(i * bs + j) % len(data) for j in range(bs)]), trainer.device)
                   for i in range(min(steps, len(data) // bs))]
        meter = ConflictMeter(trainer.task_names, trainer.device)

        def run(on: bool) -> float:
            trainer.conflict = meter if on else None
            start = time.perf_counter()
            for i in range(steps):
                trainer.step([batches[i % len(batches)]])
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            return (time.perf_counter() - start) / steps

        trainer.model.train()
        run(False), run(True)  # warm-up
        ratios = []
        print(f"conflict diagnostics cost: tasks {trainer.task_names}, weighting "
              f"{cfg.weighting._target_.rsplit('.', 1)[-1]}, batch {bs}, measured every {every} steps, "
              f"{steps} steps per side per round, threads {torch.get_num_threads()}")
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            times = {on: run(on) for on in order}
            ratios.append(times[True] / times[False])
            print(f"round {r + 1}: off {1e3 * times[False]:.1f} ms/step, on {1e3 * times[True]:.1f} ms/step, "
                  f"on/off {ratios[-1]:.3f}", flush=True)
        assert meter.epoch_row(), "the meter measured nothing: the benchmark timed no diagnostics"
    ratio = statistics.median(ratios)
    print(f"median on/off per step: {ratio:.3f}  target <= {TARGET}: {'PASS' if ratio <= TARGET else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
