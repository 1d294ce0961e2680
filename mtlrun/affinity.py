"""`mtlrun affinity [train overrides] affinity.steps=N affinity.groups=K`: which tasks help each other.

Trains the configured multi-task model for `affinity.steps` optimizer steps exactly as `mtlrun train` would
(same configs, same build path, the same `Trainer.step`; the LR schedule spans `affinity.steps`, as a train
run's spans its epochs) and, every `affinity.every` steps, measures the lookahead inter-task
affinity of TAG (mtlrun/diagnostics/affinity.py) on the step's batch. Writes affinity.json (the matrix, the pair
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
from mtlrun.checks import check_range, is_int, is_number
from mtlrun.data.loading import to_device
from mtlrun.diagnostics.affinity import (MAX_EXHAUSTIVE_TASKS, AffinityMeter, best_groupings, format_matrix,
                                    lowest_pair, plot_affinity)
from mtlrun.engine.records import atomic_write_text
from mtlrun.engine.threads import apply_threads
from mtlrun.errors import ConfigError, Problems, UsageError
from mtlrun.schema import show
from mtlrun.validation import validate_train

log = logging.getLogger("mtlrun")


def _settings(cfg: DictConfig) -> tuple[dict, list[str]]:
    """affinity.* (and what the command needs of the train config): the values, and every problem at once."""
    a, problems, opts = cfg.affinity, Problems(), {}
    for key in ("steps", "every", "groups", "top"):
        try:
            opts[key] = check_range(f"affinity.{key}", a.get(key), 1)
        except UsageError as exc:
            problems.add(str(exc))
    if a.get("lr") is not None and (not is_number(a.lr) or a.lr <= 0):
        problems.add(f"affinity.lr={show(a.lr)}: must be null (optim.lr, {cfg.optim.get('lr')}) or a finite number > 0")
    opts["lr"] = cfg.optim.get("lr") if a.get("lr") is None else a.lr  # optim.lr: validate_train checks it
    if is_int(cfg.trainer.get("accumulate")) and cfg.trainer.accumulate != 1:  # validate_train: the other values
        problems.add(f"trainer.accumulate={cfg.trainer.accumulate}: mtlrun affinity measures one batch per "
                     f"optimizer step; use trainer.accumulate=1 (and a larger data.batch_size)")
    return opts, problems.lines()


def _validate(cfg: DictConfig) -> dict:
    """The train config's problems and affinity's, listed together before anything is written."""
    opts, problems = _settings(cfg)
    try:
        validate_train(cfg)
    except ConfigError as exc:  # a key it names already (e.g. a NaN anywhere) is not listed twice
        named = {p.split(":", 1)[0].split("=", 1)[0] for p in exc.problems}
        problems = [*exc.problems, *(p for p in problems if p.split(":", 1)[0].split("=", 1)[0] not in named)]
    if problems:
        raise ConfigError(problems)
    return {**opts, "lr": float(opts["lr"])}


def _check_finite(meter: AffinityMeter, cfg: DictConfig) -> None:
    """A lookahead that turned a finite loss into NaN or inf: the ratio means nothing, so the run stops."""
    bad = meter.nonfinite_cells()
    if bad:
        lr = cfg.affinity.lr
        setting = f"affinity.lr={lr}" if lr is not None else f"affinity.lr=null (optim.lr={cfg.optim.lr})"
        (i, j), more = bad[0], f" (and {len(bad) - 1} more pair(s))" if len(bad) > 1 else ""
        raise UsageError(f"{setting}: the lookahead step is too large: a step on task '{i}' gave task '{j}' a "
                         f"non-finite loss{more}; use a smaller affinity.lr")


def affinity(cfg: DictConfig) -> dict:
    dist = distributed.dist_info()
    if dist.enabled:
        raise UsageError("mtlrun affinity runs in one process (the measurement is per batch); start it without "
                         "torchrun")
    if cfg.resume:
        raise UsageError("mtlrun affinity starts from fresh weights; resume= is for mtlrun train")
    opts = _validate(cfg)
    apply_threads(cfg.trainer.threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))

    trainer = build_trainer(cfg, run_dir, dist=dist, total_steps=opts["steps"])
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
                if meter.steps == 1:  # a step size far too large shows at once: stop before the whole run
                    _check_finite(meter, cfg)
            trainer.step([batch])  # one micro-batch per step: _settings refuses trainer.accumulate > 1
            step += 1
            if step >= opts["steps"]:
                break
        epoch += 1
    trainer.check_nonfinite()  # since the last log step
    _check_finite(meter, cfg)

    z = meter.matrix()
    a, b, worst = lowest_pair(names, z)
    groupings = {}
    if len(names) <= MAX_EXHAUSTIVE_TASKS:
        for k in range(1, opts["groups"] + 1):
            groupings[k] = [{"score": s, "groups": g} for s, g in best_groupings(names, z, k, top=opts["top"])]
    result = {"tasks": names, "matrix": [[v if math.isfinite(v) else None for v in row] for row in z], "steps": step, "measured_steps": meter.steps, "lookahead_lr": opts["lr"],
              "definition": "matrix[i][j] = mean over measured steps of 1 - L_j(after a step on task i alone) / L_j",
              "lowest_pair": {"tasks": [a, b], "affinity": worst if math.isfinite(worst) else None},
              "groupings": {str(k): v for k, v in groupings.items()}}
    atomic_write_text(run_dir / "affinity.json", json.dumps(result, indent=2, allow_nan=False))
    plot_affinity(names, z, run_dir / "affinity.png",
                  title=f"lookahead task affinity, {meter.steps} measured step(s)")
    lines = ["", f"task affinity over {meter.steps} measured step(s) (row: step on task i; column: loss of task j; "
             f"> 0: i helps j):", format_matrix(names, z), "",
             f"lowest affinity: {a} <-> {b} (mean of both directions {worst:+.4f}"
             f"{': they conflict' if worst < 0 else ': no pair conflicts' if worst >= 0 else ': never measured'})"]
    for k, options in groupings.items():
        if not options:
            continue
        best = options[0]
        shown = " | ".join(", ".join(g) for g in best["groups"])
        lines.append(f"best {k} group(s): {shown}   (total affinity {best['score']:+.4f})")
    if len(names) > MAX_EXHAUSTIVE_TASKS:
        lines.append(f"(groupings are suggested for up to {MAX_EXHAUSTIVE_TASKS} tasks)")
    lines.append(f"wrote {run_dir / 'affinity.json'}, {run_dir / 'affinity.png'}")
    log.info("\n".join(lines))
    return result

