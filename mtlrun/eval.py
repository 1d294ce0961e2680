"""`mtlrun eval checkpoint=PATH`: rebuild the model from the checkpoint's own config and measure a split."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun import __version__
from mtlrun.build import build_components
from mtlrun.config import apply_overrides
from mtlrun.data.base import SPLITS
from mtlrun.engine import checkpoint, distributed
from mtlrun.engine.device import resolve_device
from mtlrun.engine.evaluate import evaluate_split
from mtlrun.engine.records import atomic_write_text, results_table, write_metrics_csv, write_results
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")
ALLOWED = ("data.batch_size", "data.eval_batch_size", "data.num_workers", "trainer.device",
           "trainer.precision", "trainer.limit_eval_batches")


def evaluate(cfg: DictConfig) -> dict:
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise UsageError("mtlrun eval needs checkpoint=PATH (e.g. outputs/train/<date>/<time>/checkpoints/best.pt)")
    if cfg.split not in SPLITS:
        raise UsageError(f"split={cfg.split}: valid: {', '.join(SPLITS)}")
    dist = distributed.dist_info()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = Path(cfg.checkpoint).expanduser().resolve()
    state = checkpoint.load(path)
    run_cfg = apply_overrides(state["config"], cfg, list(HydraConfig.get().overrides.task), ALLOWED, "eval",
                              skip=("split",))
    if cfg.data.batch_size is not None and cfg.data.eval_batch_size is None:
        run_cfg.data.eval_batch_size = cfg.data.batch_size  # for eval, "batch size" is the eval batch size
    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(
            {"checkpoint": str(path), "split": cfg.split, **OmegaConf.to_container(run_cfg, resolve=True)}))

    parts = build_components(run_cfg)
    parts.model.load_state_dict(state["model"])
    device = resolve_device(run_cfg.trainer.device, dist.local_rank)
    data = parts.data
    measured = evaluate_split(parts.model.to(device), parts.tasks, data.dataset(cfg.split), device=device,
                              batch_size=data.eval_batch_size, precision=str(run_cfg.trainer.precision),
                              limit_batches=run_cfg.trainer.limit_eval_batches, num_workers=data.num_workers,
                              pin_memory=device.type == "cuda", dist=dist)
    metrics = {f"{cfg.split}/{k}": v for k, v in measured.items()}
    if dist.is_main:
        write_metrics_csv(run_dir / "metrics.csv", [{"epoch": state["epoch"], "split": cfg.split,
                                                     "step": state["global_step"], **measured}])
        write_results(run_dir / "results.json", metrics, checkpoint=str(path), split=cfg.split,
                      epoch=state["epoch"], mtlrun_version=__version__)
        log.info("\n%s (epoch %s) on %s\n%s", path, state["epoch"], cfg.split,
                 results_table(parts.tasks, {cfg.split: measured}))
    return metrics
