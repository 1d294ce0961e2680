"""Time per training step of every weighting relative to `static`, with 2, 3 and 10 tasks.

    python benchmarks/weighting_cost.py                       # all methods, 2/3/10 tasks, both grad_on
    python benchmarks/weighting_cost.py --tasks 2 --methods static upgrad pcgrad --steps 10 --rounds 3

Model: the default config (small CNN, hard sharing, AdamW), batch 128 of multidigits. Tasks beyond the
data's `left` and `right` are synthetic extra heads trained on copies of those labels, so the cost of
more tasks is measured on the same trunk. One step = `Trainer.step([batch])`, exactly what the training
loop runs per optimizer step, on pre-built batches (loading is not timed).

Each method is timed in rounds that alternate with `static` on the same model, so the ratio is robust to
drift in machine load. For gradient-level methods at parameter level it also times torchjd's own
`mtl_backward` + `jac_to_grad` with the method's aggregator on the same model ("direct"): mtlrun should be
no slower than that. Targets (issue 3): representation level <= 1.15x static; parameter level <= 1.0x
direct torchjd.
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
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlrun.build import Components, build_trainer
from mtlrun.config import config_dir
from mtlrun.instantiate import instantiate_node
from mtlrun.data.base import TargetInfo
from mtlrun.data.loading import to_device
from mtlrun.data.multidigits import MultiDigits
from mtlrun.distributed import DistInfo
from mtlrun.engine.trainer import Trainer
from mtlrun.models.backbone.image import SmallCNN
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.tasks import Classification

CONFIGS = Path(config_dir())
ALL_METHODS = sorted(p.stem for p in (CONFIGS / "weighting").glob("*.yaml"))


class ManyDigitTasks(MultiDigits):
    """multidigits with `num_tasks` classification targets: left, right, then copies of them."""

    def __init__(self, num_tasks: int, **kw):
        super().__init__(**kw)
        self.names = ["left", "right"] + [f"extra{i}" for i in range(num_tasks - 2)]

    @property
    def spec(self):
        spec = super().spec
        spec.targets.clear()
        spec.targets.update({n: TargetInfo("classification", num_classes=10) for n in self.names})
        return spec

    def build(self):
        splits = super().build()
        for ds in splits.values():
            targets = ds.tensors["targets"]
            base = {"left": targets["left"], "right": targets["right"]}
            ds.tensors["targets"] = {n: base[("left", "right")[i % 2]] for i, n in enumerate(self.names)}
            ds.tensors.pop("label_mask", None)
        return splits


def digit_problem(num_tasks: int, num_batches: int, batch_size: int):
    """The benchmark's problem: ManyDigitTasks data, its classification tasks, a seeded small-CNN hard-sharing
    model and `num_batches` pre-built CPU training batches."""
    data = ManyDigitTasks(num_tasks, n_train=num_batches * batch_size, n_val=8, n_test=8, batch_size=batch_size)
    tasks = {}
    for name in data.names:
        tasks[name] = Classification(10)
        tasks[name].name = name
    torch.manual_seed(0)
    model = HardParameterSharing(lambda: SmallCNN(1, (16, 16)), tasks, "image")
    train = data.dataset("train")
    batches = [to_device(train.__getitems__(list(range(i * batch_size, (i + 1) * batch_size))), torch.device("cpu"))
               for i in range(num_batches)]
    return data, tasks, model, batches


def compose_cfg(overrides):
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "bench", replace=True)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def make_trainer(model, tasks, data, weighting_overrides, run_dir) -> Trainer:
    """A Trainer over this benchmark's own model and data, built by build_trainer as `mtlrun train` builds it."""
    cfg = compose_cfg(["trainer.device=cpu", "trainer.progress_bar=false", *weighting_overrides])
    weighting = instantiate_node(cfg.weighting, "weighting")
    weighting.setup(tasks, model)
    return build_trainer(cfg, run_dir, parts=Components(data, tasks, model, weighting), dist=DistInfo())


def timed(step, batches, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return steps / (time.perf_counter() - start)


def direct_torchjd_step(model, tasks, aggregator, optimizer):
    shared_params = list(model.shared_parameters())
    task_params = [list(model.task_parameters(t)) for t in tasks]

    def step(batch):
        preds, shared = model(batch["inputs"], return_shared=True)
        losses = [tasks[t].loss(preds[t], batch["targets"][t], None) for t in tasks]
        mtl_backward(losses, features=shared, tasks_params=task_params, shared_params=shared_params)
        jac_to_grad(shared_params, aggregator)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 10])
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, ratios are medians over rounds\n")
    print(f"{'tasks':>5}  {'method':<12} {'grad_on':<15} {'steps/s':>8} {'x static':>9} {'x direct':>9}")

    for num_tasks in args.tasks:
        data, tasks, model, batches = digit_problem(num_tasks, 4, args.batch_size)
        with tempfile.TemporaryDirectory() as run_dir:
            static = make_trainer(model, tasks, data, ["weighting=static"], run_dir)

            def static_step(batch):
                static.step([batch])

            for method in args.methods:
                modes = ["-"]
                if "grad_on" in OmegaConf.load(CONFIGS / "weighting" / f"{method}.yaml") and method != "static":
                    default = OmegaConf.load(CONFIGS / "weighting" / f"{method}.yaml").grad_on
                    modes = ["parameters", "representation"] if default is not None else ["-"]
                for mode in modes:
                    extra = [] if mode == "-" else [f"weighting.grad_on={mode}"]
                    trainer = make_trainer(model, tasks, data, [f"weighting={method}", *extra], run_dir)

                    def method_step(batch, trainer=trainer):
                        trainer.step([batch])

                    sides = {"method": method_step, "static": static_step}
                    aggregator = getattr(trainer.weighting, "aggregator", None)
                    if mode == "parameters" and aggregator is not None:
                        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
                        sides["direct"] = direct_torchjd_step(model, tasks, aggregator, opt)
                    for step in sides.values():  # warm-up
                        timed(step, batches, 2)
                    rates = {k: [] for k in sides}
                    for r in range(args.rounds):
                        order = list(sides) if r % 2 == 0 else list(reversed(sides))
                        for k in order:
                            rates[k].append(timed(sides[k], batches, args.steps))
                    vs_static = statistics.median(s / m for s, m in zip(rates["static"], rates["method"]))
                    vs_direct = (statistics.median(d / m for d, m in zip(rates["direct"], rates["method"]))
                                 if "direct" in rates else None)
                    print(f"{num_tasks:>5}  {method:<12} {mode:<15} {statistics.median(rates['method']):>8.2f} "
                          f"{vs_static:>8.2f}x {'' if vs_direct is None else f'{vs_direct:>8.2f}x':>9}",
                          flush=True)


if __name__ == "__main__":
    main()
