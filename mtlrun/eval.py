"""`mtlrun eval checkpoint=PATH`: rebuild the model from the checkpoint's own config and measure a split;
with `robustness.modality=M robustness.noise=N`, measure it at every corruption level of one modality."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun import __version__
from mtlrun.build import build_components
from mtlrun.data.corruption import PROBABILITY_NOISES, corrupt, noises_for
from mtlrun import distributed
from mtlrun.engine.device import resolve_device
from mtlrun.engine.evaluate import evaluate_split
from mtlrun.engine.plots import plot_robustness
from mtlrun.engine.records import atomic_write_text, results_table, write_metrics_csv, write_results
from mtlrun.errors import UsageError
from mtlrun.inference.opener import COMMON_OPTIONS, RUNTIME_KEYS, Accepts, load_weights, open_checkpoint

log = logging.getLogger("mtlrun")
# eval measures a training checkpoint (an export holds no epoch and step to report), on every rank of a launcher
ACCEPTS = Accepts("eval", options=(*COMMON_OPTIONS, "split", "robustness"),
                  editable=(*RUNTIME_KEYS, "trainer.limit_eval_batches"), exports=False, one_process=False)


def evaluate(cfg: DictConfig) -> dict:
    dist = distributed.dist_info()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    opened = open_checkpoint(cfg, ACCEPTS, list(HydraConfig.get().overrides.task))
    path, state, run_cfg = opened.path, opened.source, opened.config
    parts = build_components(run_cfg, data_state=state["data"])
    sweep = robustness_sweep(cfg.robustness, parts.data.spec)
    load_weights(parts.model, state["model"], f"checkpoint={path}")
    if dist.is_main:  # once the checkpoint has proved to build its model: a refused one leaves no files
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(
            {"checkpoint": str(path), "split": cfg.split, "robustness": OmegaConf.to_container(cfg.robustness),
             **OmegaConf.to_container(run_cfg, resolve=True)}))
    device = resolve_device(run_cfg.trainer.device, dist.local_rank)
    data = parts.data
    model = parts.model.to(device)

    def measure(transform=None) -> dict[str, float]:
        loader = data.eval_loader(cfg.split, device=device, rank=dist.rank, world_size=dist.world_size)
        return evaluate_split(model, parts.tasks, loader, device=device, precision=str(run_cfg.trainer.precision),
                              limit_batches=run_cfg.trainer.limit_eval_batches, transform=transform,
                              split=cfg.split)

    if sweep is None:
        measured = measure()
        rows = [{"epoch": state["epoch"], "split": cfg.split, "step": state["global_step"], **measured}]
        extra = {}
    else:
        modality, kind, noise, levels, seed = sweep
        per_level = [measure(_noise(modality, kind, noise, level, seed, i, device))
                     for i, level in enumerate(levels)]
        rows = [{"epoch": state["epoch"], "split": cfg.split, "step": state["global_step"], "level": level,
                 **m} for level, m in zip(levels, per_level)]
        measured = per_level[0]  # results.json's metrics: the lowest level (the clean data when it is 0)
        curves = {f"{cfg.split}/{k}": [m[k] for m in per_level] for k in per_level[0]}
        extra = {"robustness": {"modality": modality, "noise": noise, "levels": levels, "seed": seed,
                                "metrics": curves, "auc": {k: area(levels, v) for k, v in curves.items()}}}
    metrics = {f"{cfg.split}/{k}": v for k, v in measured.items()}
    if dist.is_main:
        write_metrics_csv(run_dir / "metrics.csv", rows)
        write_results(run_dir / "results.json", metrics, checkpoint=str(path), split=cfg.split,
                      epoch=state["epoch"], mtlrun_version=__version__, **extra)
        if sweep is None:
            log.info("\n%s (epoch %s) on %s\n%s", path, state["epoch"], cfg.split,
                     results_table(parts.tasks, {cfg.split: measured}))
        else:
            _report_sweep(parts.tasks, extra["robustness"], cfg.split, run_dir)
    return metrics


def robustness_sweep(rcfg: DictConfig, spec) -> tuple | None:
    """Validated (modality, kind, noise, levels, seed), or None for a plain evaluation."""
    if rcfg.modality is None and rcfg.noise is None:
        return None
    modality, noise = rcfg.modality, rcfg.noise
    if modality not in spec.modalities:
        raise UsageError(f"robustness.modality={modality}: the model reads {', '.join(spec.modalities)}")
    kind = spec.modalities[modality].kind
    valid = noises_for(kind)
    if noise not in valid:
        raise UsageError(f"robustness.noise={noise}: for the {kind} modality '{modality}' valid noises are "
                         f"{', '.join(valid)}")
    levels = list(rcfg.levels) if rcfg.levels is not None else []
    bad = [v for v in levels if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
           or v < 0 or (noise in PROBABILITY_NOISES and v > 1)]
    if not levels or bad or levels != sorted(levels) or len(set(levels)) != len(levels):
        bound = "in [0, 1] (a probability)" if noise in PROBABILITY_NOISES else ">= 0"
        raise UsageError(f"robustness.levels={levels}: give increasing, distinct numbers {bound}, "
                         f"e.g. [0,0.25,0.5,0.75,1]")
    if isinstance(rcfg.seed, bool) or not isinstance(rcfg.seed, int):
        raise UsageError(f"robustness.seed={rcfg.seed}: give an integer (the corruption draws follow from it)")
    return modality, kind, noise, [float(v) for v in levels], rcfg.seed


def _noise(modality: str, kind: str, noise: str, level: float, seed: int, index: int, device: torch.device):
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000 + index + 10_000 * distributed.dist_info().rank)

    def transform(batch: dict) -> dict:
        return corrupt(batch, modality, kind, noise, level, generator)

    return transform


def area(levels: list[float], values: list[float]) -> float:
    """Trapezoidal area under metric(level), divided by the level range: the mean metric over the sweep."""
    if len(levels) == 1:
        return float(values[0])
    total = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(levels, levels[1:], values, values[1:]))
    return total / (levels[-1] - levels[0])


def _report_sweep(tasks: dict, sweep: dict, split: str, run_dir: Path) -> None:
    keys = [f"{split}/{t}/{task.metric_names[0]}" for t, task in tasks.items()]
    directions = {f"{split}/{t}/{task.metric_names[0]}": task.higher_is_better.get(task.metric_names[0])
                  for t, task in tasks.items()}
    plot_robustness({"model": {k: [sweep["metrics"][k]] for k in keys}}, sweep["levels"],
                    f"{sweep['modality']}: {sweep['noise']}", run_dir / "robustness.png", directions,
                    xlabel=f"{sweep['noise']} level on {sweep['modality']}")
    width = max(len(k) for k in keys)
    lines = [f"robustness of {split} to {sweep['noise']} on {sweep['modality']}",
             f"{'level':<{width}}  " + "  ".join(f"{v:>7g}" for v in sweep["levels"]) + "      AUC"]
    for k in keys:
        lines.append(f"{k:<{width}}  " + "  ".join(f"{v:7.4f}" for v in sweep["metrics"][k])
                     + f"  {sweep['auc'][k]:7.4f}")
    log.info("\n%s", "\n".join(lines))
