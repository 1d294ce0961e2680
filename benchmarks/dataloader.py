"""Speed of the table loader (data=table) against the training step it feeds, on the PNG example.

What it measures, on examples/make_multidigits_table.py's output (16x16 grey PNGs + a text + a tabular
input, 4 targets; written to a temporary folder unless --data names one) with the example's config
(examples/configs/experiment/multidigits_table.yaml):
  * loader: batches per second of one pass over the train split through mtlrun's own train loader
    (mtlrun.data.loading.train_loader: shuffled, collated), nothing else, for
      - num_workers=0: PNGs decoded in this process,
      - num_workers=2: decoded in 2 worker processes (their start-up is included, as in each epoch),
      - num_workers=2, persistent_workers=true: the same workers serve every pass (started once),
      - cache=true, num_workers=0: decoded once at start-up (time printed apart), then gathered from memory;
  * training: optimizer steps per second of the Trainer built from the same config (default small model:
    SmallCNN + GRU + MLP encoders, concat fusion, hard sharing, AdamW; trainer.device=auto) on pre-built
    batches already on the device (no loading).
If the loader's batches/s is well above the training steps/s, loading does not slow training down.

Run:  python benchmarks/dataloader.py [--n-train N] [--batch-size B] [--epochs E] [--threads T] [--data DIR]
Figures are wall-clock and noisy when other processes share the CPU; no assertion is made on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.instantiate import instantiate_node
from mtlrun.data.loading import to_device
from mtlrun.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=2000, help="training rows of the generated example (default 2000)")
    p.add_argument("--batch-size", type=int, default=128, help="default 128 (the example's data.batch_size)")
    p.add_argument("--epochs", type=int, default=3, help="timed passes per loader setting; the median is shown")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--data", type=Path, default=None, help="an existing example folder (manifest.csv inside)")
    return p.parse_args()


def make_example(out: Path, n_train: int) -> None:
    spec = importlib.util.spec_from_file_location("make_table", EXAMPLES / "make_multidigits_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out), "--n-train", str(n_train), "--n-val", "64", "--n-test", "64"])


def compose_example(manifest: Path, overrides: list[str]):
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "bench", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"hydra.searchpath=[file://{EXAMPLES / 'configs'}]", "experiment=multidigits_table",
            f"data.path={manifest}", *overrides])


def loader_rate(cfg, epochs: int) -> tuple[float, float, int]:
    """(batches/s median over epochs, seconds to build the data incl. any cache, batches per epoch)."""
    start = time.perf_counter()
    data = instantiate_node(cfg.data, "data")
    data.dataset("train")
    built = time.perf_counter() - start
    rates, n = [], 0
    for epoch in range(epochs):
        start = time.perf_counter()
        n = sum(1 for _ in data.train_loader(epoch=epoch, seed=0, device=torch.device("cpu")))
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), built, n


def training_rate(cfg, steps: int, run_dir: str) -> tuple[float, str]:
    trainer = build_trainer(cfg, run_dir, dist=DistInfo())
    batches = [to_device(b, trainer.device) for b in trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)]
    trainer.model.train()
    for batch in batches[:3]:  # warm-up
        trainer.step([batch])
    sync(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.step([batches[i % len(batches)]])
    sync(trainer.device)
    rate = steps / (time.perf_counter() - start)
    trainer.check_nonfinite()
    encoders = getattr(trainer.model.encoder, "encoders", {"": trainer.model.encoder})
    model = f"{type(trainer.model).__name__}({', '.join(type(e).__name__ for e in encoders.values())})"
    return rate, f"{model} on {trainer.device}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-") as tmp:
        folder = args.data
        if folder is None:
            folder = Path(tmp) / "example"
            make_example(folder, args.n_train)
        manifest = folder / "manifest.csv"
        base = [f"data.batch_size={args.batch_size}"]
        print(f"table loader benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{manifest}, batch size {args.batch_size}, median of {args.epochs} passes over the train split")
        results = {}
        for label, overrides in (("num_workers=0", ["data.num_workers=0"]),
                                 ("num_workers=2", ["data.num_workers=2"]),
                                 ("num_workers=2, persistent", ["data.num_workers=2", "data.persistent_workers=true"]),
                                 ("cache=true, num_workers=0", ["data.cache=true", "data.num_workers=0"])):
            rate, built, n = loader_rate(compose_example(manifest, base + overrides), args.epochs)
            results[label] = rate
            print(f"loader {label:<26} {rate:8.1f} batches/s = {rate * args.batch_size:9.0f} samples/s  ({n} batches "
                  f"per pass; data built in {built:.2f} s)", flush=True)
        step_rate, model = training_rate(compose_example(manifest, base), args.steps, tmp)
        print(f"training step, {model}: {step_rate:.1f} steps/s = {step_rate * args.batch_size:.0f} samples/s on "
              f"pre-built batches")
        for label, rate in results.items():
            print(f"loader {label} / training steps: {rate / step_rate:.1f}x")


if __name__ == "__main__":
    main()
