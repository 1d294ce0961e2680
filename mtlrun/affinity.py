"""`mtlrun affinity [train overrides] affinity.steps=N affinity.groups=K`: which tasks help each other.

Trains the configured multi-task model for `affinity.steps` optimizer steps exactly as `mtlrun train` would
(same configs, same build path) and, every `affinity.every` steps, measures the lookahead inter-task
affinity of TAG (mtlrun/engine/affinity.py) on the step's batch. Writes affinity.json (the matrix, the pair
that conflicts most, the best groupings for 1..K groups), affinity.png (heatmap) and config.yaml into the run
dir, and prints the matrix and the groupings. Nothing is checkpointed: this is a short diagnostic run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun import distributed
from mtlrun.build import build_trainer
from mtlrun.checks import check_range, is_number
from mtlrun.data.loading import to_device
from mtlrun.engine.affinity import (MAX_EXHAUSTIVE_TASKS, AffinityMeter, best_groupings, format_matrix,
                                    lowest_pair, plot_affinity)
from mtlrun.engine.records import atomic_write_text
from mtlrun.engine.threads import apply_threads
from mtlrun.errors import UsageError
from mtlrun.validation import validate_train

log = logging.getLogger("mtlrun")


def _settings(cfg: DictConfig) -> dict:
    a = cfg.affinity
    steps = check_range("affinity.steps", a.steps, 1)
    every = check_range("affinity.every", a.every, 1)
    groups = check_range("affinity.groups", a.groups, 1)
    top = check_range("affinity.top", a.top, 1)
    lr = cfg.optim.lr if a.lr is None else a.lr
    if not is_number(lr) or lr <= 0:
        raise UsageError(f"affinity.lr={a.lr}: must be null (optim.lr, {cfg.optim.lr}) or a number > 0")
    if int(cfg.trainer.accumulate) != 1:
        raise UsageError(f"trainer.accumulate={cfg.trainer.accumulate}: mtlrun affinity measures one batch per "
                         f"optimizer step; use trainer.accumulate=1 (and a larger data.batch_size)")
    return {"steps": steps, "every": every, "groups": groups, "top": top, "lr": float(lr)}


def affinity(cfg: DictConfig) -> dict:
    dist = distributed.dist_info()
    if dist.enabled:
        raise UsageError("mtlrun affinity runs in one process (the measurement is per batch); start it without "
                         "torchrun")
    if cfg.resume:
        raise UsageError("mtlrun affinity starts from fresh weights; resume= is for mtlrun train")
    validate_train(cfg)
    opts = _settings(cfg)
    apply_threads(cfg.trainer.threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))

    trainer = build_trainer(cfg, run_dir, dist=dist)
    names = trainer.task_names
    if len(names) < 2:
        raise UsageError(f"mtlrun affinity needs at least 2 tasks; this config trains {names}")
    if opts["groups"] > len(names):
        raise UsageError(f"affinity.groups={opts['groups']}: at most the number of tasks ({len(names)})")
    try:
        meter = AffinityMeter(trainer.model, trainer.tasks, opts["lr"], trainer.device)
    except ValueError as exc:  # soft sharing: nothing is shared
        raise UsageError(f"arch={cfg.arch._target_.rsplit('.', 1)[-1]}: {exc}") from exc

    log.info(f"affinity: {opts['steps']} training step(s), measuring every {opts['every']} (lookahead lr "
             f"{opts['lr']:g}) on {len(names)} tasks; run dir {run_dir}")
    step, epoch = 0, 0
    trainer.model.train()
    while step < opts["steps"]:
        loader = trainer.data.train_loader(epoch=epoch, seed=trainer.seed, device=trainer.device)
        for batch in loader:
            batch = to_device(batch, trainer.device)
            if step % opts["every"] == 0:
                meter.measure(batch)
            trainer.training_step(batch)
            trainer.optimizer_step()
            step += 1
            if step >= opts["steps"]:
                break
        epoch += 1
    trainer._check_nonfinite()

    z = meter.matrix()
    a, b, worst = lowest_pair(names, z)
    groupings = {}
    if len(names) <= MAX_EXHAUSTIVE_TASKS:
        for k in range(1, opts["groups"] + 1):
            groupings[k] = [{"score": s, "groups": g} for s, g in best_groupings(names, z, k, top=opts["top"])]
    result = {"tasks": names, "matrix": [[v if math.isfinite(v) else None for v in row] for row in z], "steps": step, "measured_steps": meter.steps, "lookahead_lr": opts["lr"],
              "definition": "matrix[i][j] = mean over measured steps of 1 - L_j(after a step on task i alone) / L_j",
              "lowest_pair": {"tasks": [a, b], "affinity": worst},
              "groupings": {str(k): v for k, v in groupings.items()}}
    atomic_write_text(run_dir / "affinity.json", json.dumps(result, indent=2, allow_nan=False))
    plot_affinity(names, z, run_dir / "affinity.png",
                  title=f"lookahead task affinity, {meter.steps} measured step(s)")
    lines = ["", f"task affinity over {meter.steps} measured step(s) (row: step on task i; column: loss of task j; "
             f"> 0: i helps j):", format_matrix(names, z), "",
             f"lowest affinity: {a} <-> {b} (mean of both directions {worst:+.4f}"
             f"{': they conflict' if worst < 0 else ': no pair conflicts'})"]
    for k, options in groupings.items():
        best = options[0]
        shown = " | ".join(", ".join(g) for g in best["groups"])
        lines.append(f"best {k} group(s): {shown}   (total affinity {best['score']:+.4f})")
    if len(names) > MAX_EXHAUSTIVE_TASKS:
        lines.append(f"(groupings are suggested for up to {MAX_EXHAUSTIVE_TASKS} tasks)")
    lines.append(f"wrote {run_dir / 'affinity.json'}, {run_dir / 'affinity.png'}")
    log.info("\n".join(lines))
    return result

