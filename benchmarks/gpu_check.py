"""Everything GPU-specific in one command: placement, host syncs in the step, throughput, precision, memory.

Every figure comes from the real Trainer, built as `mtlrun train` builds it (Hydra compose of configs/train.yaml
with overrides, then mtlrun.build.build_trainer), driving `trainer.step([batch])`, one optimizer step as
Trainer.fit takes it.

  placement   every built-in data set x a representative arch/fusion/weighting trains 20 steps; model,
              weighting, optimizer state, training sums and metric states must be on the device; eval runs
  sync        steps after warm-up under torch.cuda.set_sync_debug_mode("error") (between log steps): each
              weighting (both grad_on levels where it has them), text encoder and fusion; a sync fails it,
              except the known ones in KNOWN_SYNCS (status "known sync": listed with the reason)
  throughput  mtlrun steps/s over a plain PyTorch loop on the same model and tensors (same optimizer class and
              hyperparameters, the tasks' own losses, one backward): default CNN at batch 512, ResNet-18 HPS on
              224 px synthetic images at batch 128; target ratio >= 0.95
  precision   ResNet-18 bf16 autocast over fp32 (target >= 1.8x), trainer.compile=true over eager,
              trainer.channels_last=true over the default layout
  gradient    upgrad (grad_on=parameters, torchjd's Gramian path) for 2, 3 and 10 tasks: time per step over
              static, peak memory
Peak CUDA memory is recorded for every configuration. `--device cpu` is a dry run: tiny sizes, one or two
steps, no warm-up (it proves that every case composes, builds and steps, not a figure); the checks that need
CUDA (sync debug mode, speed targets, compile) say "skipped: needs cuda".

Run:  python benchmarks/gpu_check.py [--device cuda] [--out gpu_check.json] [--only GROUP ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import gpu_data
from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.data.loading import to_device
from mtlrun.distributed import DistInfo
from mtlrun.instantiate import instantiate_node

GROUPS = ("placement", "sync", "throughput", "precision", "gradient")
NEEDS_CUDA = "skipped: needs cuda"
# What still synchronises inside a step on purpose, and why (a sync here is reported, not failed).
KNOWN_SYNCS = {
    "weighting=upgrad": "gradient-level methods take the T x T Gramian to the host once per step: their solvers "
                        "(quadprog, cvxpy, MGDA's Frank-Wolfe loop) run there (mtlrun/weighting/gradient_base.py)",
    "weighting=mgda": "as weighting=upgrad: the T x T Gramian goes to the host for the solver, once per step",
    "weighting=nash_mtl": "as weighting=upgrad; Nash-MTL solves its bargaining problem with cvxpy on the host",
}
FUSIONS = sorted(p.stem for p in (config_dir() / "fusion").glob("*.yaml"))


class Check:
    """One bench: compose + build a Trainer; `steps(n)` runs n training steps on fixed batches."""

    def __init__(self, args, overrides: list[str], run_dir: str, synthetic: tuple | None = None):
        self.args = args
        OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "gpu-check", replace=True)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"trainer.device={args.device}", "trainer.progress_bar=false",
                                                          "trainer.log_every_n_steps=1000000", *overrides])
        self.cfg = cfg
        self.trainer = build_trainer(cfg, run_dir, dist=DistInfo())
        self.device = self.trainer.device
        self.batches = self._batches(synthetic)

    def _batches(self, synthetic) -> list[dict]:
        t = self.trainer
        if synthetic is None:
            loader = t.data.train_loader(epoch=0, seed=0, device=self.device)
            return [to_device(b, self.device) for b, _ in zip(loader, range(4))]
        shape, batch_size = synthetic  # random images of `shape` for every image input; targets from a real batch
        real = next(iter(t.data.train_loader(epoch=0, seed=0, device=self.device)))
        gen = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(2):
            idx = torch.randint(0, len(next(iter(real["targets"].values()))), (batch_size,), generator=gen)
            batch = {"inputs": {m: torch.randn(batch_size, *shape, generator=gen) for m in real["inputs"]},
                     "targets": {k: v[idx] for k, v in real["targets"].items()}}
            batches.append(to_device(batch, self.device))
        return batches

    def steps(self, n: int, timed: bool = True) -> float:
        """Steps per second over n training steps (`timed=False`: no synchronize around them)."""
        t = self.trainer
        t.model.train()
        if timed:
            sync(self.device)
        start = time.perf_counter()
        for i in range(n):
            t.step([self.batches[i % len(self.batches)]])
        if timed:
            sync(self.device)
        return n / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def off_device(trainer) -> list[str]:
    """Names of the tensors of the run's state that are not on the trainer's device."""
    dev = trainer.device.type
    named = [*(("model." + n, p) for n, p in trainer.model.state_dict().items()),
             *(("weighting." + n, p) for n, p in trainer.weighting.state_dict().items()
               if isinstance(p, torch.Tensor)),
             ("train_sums", trainer.train_sums.packed), ("first_nonfinite", trainer.first_nonfinite)]
    for i, state in enumerate(trainer.optimizer.state.values()):
        named += [(f"optimizer.state{i}.{k}", v) for k, v in state.items()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]  # Adam's `step` counter stays on the host
    for name, task in trainer.tasks.items():
        metrics = task.metrics()
        metrics.reset(trainer.device)
        named += [(f"metrics.{name}.{i}", s) for i, s in enumerate(metrics.states())]
    return [n for n, p in named if p.device.type != dev]


# ------------------------------------------------------------------------------------------ the checks
def placement(args, tmp: Path) -> list[dict]:
    small = args.device == "cpu"
    data = {"multidigits": ["data=multidigits"],
            "digits_av": ["experiment=digits_av", "fusion=attention", "weighting=uw"],
            "scenes": ["experiment=scenes_hps", "weighting=famo", "data.image_size=32"],
            "cifar10": ["data=cifar10", "tasks=cifar10", "backbone/image=resnet18", "weighting=mgda",
                        f"data.root={args.cifar or gpu_data.write_cifar(tmp / 'cifar', 40 if small else 400)}",
                        "data.val_size=20"],
            "celeba": ["data=celeba", "tasks=celeba", "weighting=gradnorm", "data.num_workers=0", "data.image_size=32",
                       f"data.root={args.celeba or gpu_data.write_celeba(tmp / 'celeba', 40 if small else 200)}"],
            "nyuv2": ["data=nyuv2", "tasks=nyuv2", "backbone/image=segnet", "weighting=upgrad",
                      "weighting.grad_on=representation", "data.num_workers=0", "data.val_size=2",
                      f"data.root={args.nyuv2 or gpu_data.write_nyuv2(tmp / 'nyuv2', 12, 4)}"],
            "table": [f"hydra.searchpath=[file://{gpu_data.REPO / 'examples' / 'configs'}]",
                      "experiment=multidigits_table",
                      f"data.path={gpu_data.write_table(tmp / 'table', 64 if small else 512)}"]}
    sized = ["data.n_train=64", "data.n_val=32", "data.n_test=32"]
    rows = []
    for name, overrides in data.items():
        if name in ("multidigits", "digits_av", "scenes"):
            overrides = [*overrides, *sized]
        batch = "data.batch_size=4" if name == "nyuv2" else "data.batch_size=16"
        row = {"group": "placement", "name": f"data={name}", "overrides": [*overrides, batch]}
        rows.append(run_guarded(row, lambda: _placement(args, row, tmp)))
    return rows


def _placement(args, row: dict, tmp: Path) -> None:
    reset_peak(torch.device(args.device))
    bench = Check(args, row["overrides"], str(tmp / "run"))
    bench.steps(2 if args.device == "cpu" else 20)
    bench.trainer.cfg.limit_eval_batches = 2
    val = bench.trainer.evaluate("val")
    wrong = off_device(bench.trainer)
    row.update(device=str(bench.device), eval_metrics=len(val), peak_mib=peak_memory(bench.device),
               status="pass" if not wrong else f"fail: not on {bench.device}: {', '.join(wrong[:5])}")


def sync_checks(args, tmp: Path) -> list[dict]:
    cases = {"weighting=static": [], "weighting=uw": ["weighting=uw"], "weighting=famo": ["weighting=famo"]}
    for method, levels in (("gradnorm", ("parameters", "representation")),
                           ("upgrad", ("parameters", "representation")), ("mgda", ("parameters", "representation")),
                           ("nash_mtl", ("parameters", "representation"))):
        for level in levels:
            cases[f"weighting={method} grad_on={level}"] = [f"weighting={method}", f"weighting.grad_on={level}"]
    av = ["experiment=digits_av", "data.n_train=64", "data.n_val=16", "data.n_test=16"]
    for text in ("gru", "lstm", "transformer"):
        cases[f"text={text}"] = [*av, "data.modalities=[text]", f"backbone/text={text}"]
    for fusion in FUSIONS:
        cases[f"fusion={fusion}"] = [*av, f"fusion={fusion}"]
    rows = []
    for name, overrides in cases.items():
        overrides = [*overrides, "data.batch_size=16"] + ([] if "experiment=digits_av" in overrides else
                                                          ["data.n_train=64", "data.n_val=16", "data.n_test=16"])
        row = {"group": "sync", "name": name, "overrides": overrides}
        rows.append(run_guarded(row, lambda: _sync(args, row, tmp)))
    return rows


def _sync(args, row: dict, tmp: Path) -> None:
    bench = Check(args, row["overrides"], str(tmp / "run"))
    if bench.device.type != "cuda":  # the dry run: the case builds and takes a step
        bench.steps(1)
        row["status"] = NEEDS_CUDA + " (the steps ran on cpu)"
        return
    bench.steps(2)  # warm-up: lazy allocations, cuDNN's choice of algorithms
    sync(bench.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        bench.steps(5, timed=False)  # Trainer.step between two log steps
        torch.cuda.set_sync_debug_mode("default")
        sync(bench.device)
        row["status"] = "pass"
    except RuntimeError as exc:
        known = next((why for key, why in KNOWN_SYNCS.items() if row["name"].startswith(key)), None)
        row["status"] = f"known sync: {known}" if known else f"fail: {str(exc).splitlines()[0]}"
        row["where"] = _sync_site(exc)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _sync_site(exc: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "mtlrun" in f.filename or "torchjd" in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def throughput(args, tmp: Path) -> list[dict]:
    cpu = args.device == "cpu"
    cases = {"default CNN, batch 512": (["data.batch_size=16" if cpu else "data.batch_size=512",
                                          "data.n_train=64" if cpu else "data.n_train=2048"], None),
             "ResNet-18 HPS, 224 px, batch 128": (_resnet_overrides(args, tmp), ((3, 32, 32), 4) if cpu
                                                  else ((3, 224, 224), 128))}
    rows = []
    for name, (overrides, synthetic) in cases.items():
        row = {"group": "throughput", "name": name, "overrides": overrides}
        rows.append(run_guarded(row, lambda: _throughput(args, row, tmp, synthetic)))
    return rows


def _resnet_overrides(args, tmp: Path) -> list[str]:
    root = args.celeba or tmp / "celeba"
    if not args.celeba and not (root / "celeba").is_dir():
        gpu_data.write_celeba(root, 40)
    return ["data=celeba", "tasks=celeba", "backbone/image=resnet18", "data.num_workers=0",
            f"data.image_size={32 if args.device == 'cpu' else 224}", f"data.root={root}", "data.batch_size=8"]


def _throughput(args, row: dict, tmp: Path, synthetic) -> None:
    reset_peak(torch.device(args.device))
    bench = Check(args, row["overrides"], str(tmp / "run"), synthetic)
    t = bench.trainer
    plain_opt = instantiate_node(bench.cfg.optim, "optim")(list(t.model.parameters()))  # same class and settings

    def plain(batch):
        plain_opt.zero_grad(set_to_none=True)
        preds = t.model(batch["inputs"])
        sum(task.loss(preds[n], batch["targets"][n], None) for n, task in t.tasks.items()).backward()
        plain_opt.step()

    def plain_rate(n):
        sync(bench.device)
        start = time.perf_counter()
        for i in range(n):
            plain(bench.batches[i % len(bench.batches)])
        sync(bench.device)
        return n / (time.perf_counter() - start)

    n, rounds = (1, 1) if args.device == "cpu" else (20, 3)
    bench.steps(n), plain_rate(n)  # warm-up of both
    ratios = []
    for r in range(rounds):
        m, p = (bench.steps(n), plain_rate(n)) if r % 2 == 0 else tuple(reversed((plain_rate(n), bench.steps(n))))
        ratios.append(m / p)
    ratio = statistics.median(ratios)
    row.update(ratio=round(ratio, 3), peak_mib=peak_memory(bench.device),
               status=NEEDS_CUDA + f" (cpu ratio {ratio:.2f})" if bench.device.type != "cuda"
               else "pass" if ratio >= 0.95 else f"fail: ratio {ratio:.3f} < 0.95")


def precision(args, tmp: Path) -> list[dict]:
    cpu = args.device == "cpu"
    # bf16 convolutions are ~15x slower than fp32 on most CPUs: the dry run only proves the path, at 16 px
    synthetic = ((3, 16, 16), 2) if cpu else ((3, 224, 224), 128)
    base = _resnet_overrides(args, tmp)
    cases = [("bf16 autocast vs fp32", ["trainer.precision=bf16"], 1.8),
             ("compile vs eager", ["trainer.compile=true"], None),
             ("channels_last vs default (bf16)", ["trainer.precision=bf16", "trainer.channels_last=true"], None)]
    rows = []
    for name, extra, target in cases:
        row = {"group": "precision", "name": name, "overrides": [*base, *extra]}
        rows.append(run_guarded(row, lambda: _speedup(args, row, tmp, synthetic, base, extra, target)))
    return rows


def _speedup(args, row, tmp, synthetic, base, extra, target) -> None:
    cpu = args.device == "cpu"
    if cpu and "trainer.compile=true" in extra:
        row["status"] = NEEDS_CUDA
        return
    reference = base + (["trainer.precision=bf16"] if "trainer.channels_last=true" in extra else [])
    n = 1 if cpu else 20
    rates, peaks = [], []
    for overrides in (reference, base + extra):
        reset_peak(torch.device(args.device))
        bench = Check(args, overrides, str(tmp / "run"), synthetic)
        if not cpu:
            bench.steps(n)  # warm-up (compiles with trainer.compile=true)
        rates.append(bench.steps(n))
        peaks.append(peak_memory(bench.device))
        if "trainer.channels_last=true" in overrides:
            weight = next(p for p in bench.trainer.model.parameters() if p.dim() == 4)
            if not weight.is_contiguous(memory_format=torch.channels_last):
                row["status"] = "fail: trainer.channels_last=true left the convolution weights contiguous"
                return
    speedup = rates[1] / rates[0]
    row.update(speedup=round(speedup, 3), peak_mib=peaks[1], reference_peak_mib=peaks[0])
    if cpu:
        row["status"] = NEEDS_CUDA + f" (cpu speed-up {speedup:.2f})"
    else:
        row["status"] = "pass" if target is None or speedup >= target else f"fail: {speedup:.2f}x < {target}x"


def gradient(args, tmp: Path) -> list[dict]:
    celeba = _resnet_overrides(args, tmp)[:2] + [o for o in _resnet_overrides(args, tmp)[3:]
                                                  if not o.startswith("data.image_size")] + ["data.image_size=32"]
    ten = ",".join(gpu_data.CELEBA_ATTRIBUTES[:10])
    cases = {2: ["tasks=multidigits"], 3: ["tasks=multidigits_all", "tasks.only=[left,right,parity]"],
             10: [*celeba, f"tasks=celeba_all", f"tasks.only=[{ten}]"]}
    small = ["data.n_train=64", "data.n_val=16", "data.n_test=16"]
    rows = []
    for k, overrides in cases.items():
        overrides = [*overrides, *(small if k < 10 else []), "data.batch_size=16" if args.device == "cpu"
                     else "data.batch_size=256"]
        row = {"group": "gradient", "name": f"upgrad vs static, {k} tasks", "overrides": overrides}
        rows.append(run_guarded(row, lambda: _gradient(args, row, tmp)))
    return rows


def _gradient(args, row, tmp) -> None:
    n = 1 if args.device == "cpu" else 20
    figures = {}
    for method in ("static", "upgrad"):
        reset_peak(torch.device(args.device))
        bench = Check(args, [*row["overrides"], f"weighting={method}"], str(tmp / "run"))
        bench.steps(n)  # warm-up
        figures[method] = (1000 / bench.steps(n), peak_memory(bench.device))
    row.update(ms_per_step={m: round(v[0], 2) for m, v in figures.items()},
               peak_mib={m: v[1] for m, v in figures.items()},
               time_ratio=round(figures["upgrad"][0] / figures["static"][0], 2), status="pass")


def run_guarded(row: dict, fn) -> dict:
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # one failing configuration must not hide the others' figures
        row["status"] = f"fail: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{row['group']:<10} {row['name']:<42} {row['status']}", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run at tiny sizes")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the JSON table goes")
    p.add_argument("--only", nargs="*", choices=GROUPS, default=list(GROUPS), help="the groups to run")
    for name in ("cifar", "celeba", "nyuv2"):
        p.add_argument(f"--{name}", type=Path, default=None, help=f"data.root of the real {name} (default: a stand-in)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here; --device cpu runs the dry run", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtlrun-gpu-check-") as tmp:
        for group in args.only:
            rows += globals()[{"sync": "sync_checks"}.get(group, group)](args, Path(tmp))
    failed = [r for r in rows if r["status"].startswith("fail")]
    report = {"device": args.device, "dry_run": args.device == "cpu", "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "seconds": round(time.perf_counter() - start, 1), "known_syncs": KNOWN_SYNCS, "checks": rows,
              "passed": not failed}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\n{len(rows)} checks, {len(failed)} failed, {report['seconds']} s; table: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
