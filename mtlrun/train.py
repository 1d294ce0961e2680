"""`mtlrun train`: compose -> validate -> instantiate -> Trainer.fit -> test the best checkpoint.

Returns one number to Hydra, `optimized_metric` measured on the best checkpoint (mtlrun/objective.py), so a
sweeper such as Optuna's (`mtlrun train -m hparams_search=...`) can optimise it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from mtlrun import __version__, distributed, objective
from mtlrun.build import build_trainer
from mtlrun.overrides import apply_overrides
from mtlrun.validation import validate_train
from mtlrun.engine import checkpoint
from mtlrun.engine.detection_plots import plot_detections
from mtlrun.engine.plots import plot_curves
from mtlrun.engine.records import atomic_write_text, results_table, write_metrics_csv, write_results
from mtlrun.engine.threads import apply_threads
from mtlrun.trust import RESUMED_FROM, check_source, without_trackers

log = logging.getLogger("mtlrun")


def _is_own_best(state: dict) -> bool:
    """The checkpoint was written at the end of its best epoch, so its weights are the best weights."""
    return state["best_epoch"] is not None and state["best_epoch"] == state["epoch"] and state["batches_done"] == 0


def _restore_best(resume_path: Path, state: dict, run_dir: Path) -> None:
    """Make run_dir's best.pt the checkpoint the resumed state calls best, before training goes on.

    last.pt is written before best.pt, so a run killed between the two leaves a last.pt that is itself the
    best epoch next to an older best.pt: best.pt is then restored from last.pt. A run resumed into a new
    directory starts with the original run's best.pt.
    """
    if state["best_epoch"] is None:
        return
    source = resume_path.parent / "best.pt"
    target = run_dir / "checkpoints" / "best.pt"
    best = checkpoint.load(source, key="resume") if source.is_file() else None
    if best is not None and best["epoch"] == state["best_epoch"]:
        if source.resolve() != target.resolve():
            checkpoint.save(target, best)
        return
    found = f"{source} is from epoch {best['epoch']}" if best is not None else f"{source} is missing"
    if _is_own_best(state):
        log.warning(f"resume: {found}, but the best epoch is {state['best_epoch']}, which is {resume_path} "
                    f"itself (the run stopped between writing last.pt and best.pt): best.pt restored from it")
        checkpoint.save(target, state)
    else:
        log.warning(f"resume: {found}, the checkpoint's best epoch is {state['best_epoch']}; best.pt will be "
                    f"written at the next improvement, and the final metrics say which epoch they come from")


def _objective(cfg: DictConfig, tasks: dict) -> objective.Objective:
    """optimized_metric against the built tasks, and in a sweep against the sweeper's direction (Optuna's)."""
    wanted = cfg.get("optimized_metric")
    goal = objective.resolve(wanted, str(cfg.trainer.monitor), str(cfg.trainer.monitor_mode), tasks)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.get("sweeper") is not None:
        objective.check_sweeper_direction(goal, hydra_cfg.sweeper.get("direction"), wanted, str(cfg.trainer.monitor))
    return goal


def train(cfg: DictConfig) -> float | None:
    dist = distributed.dist_info()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_state = None
    if cfg.resume:
        resume_path = Path(cfg.resume).expanduser().resolve()
        resume_state = checkpoint.load(resume_path, key="resume")
        trusted = list(cfg.get("trusted_targets") or [])  # from this command line, never from the checkpoint
        check_source(resume_state, trusted, f"resume={resume_path}", RESUMED_FROM)
        trackers = cfg.get("logger")  # this command line's (logger=[...]), never the checkpoint's
        cfg = apply_overrides(without_trackers(resume_state["config"]), cfg, list(HydraConfig.get().overrides.task),
                              None, "resume", skip=("trusted_targets", "logger"))
        cfg.resume = str(resume_path)
        with open_dict(cfg):
            cfg.trusted_targets = trusted
            if trackers is not None:
                cfg.logger = trackers
        log.info(f"resuming {resume_path} at epoch {resume_state['epoch'] + 1}, "
                 f"batch {resume_state['batches_done']}")
        if dist.is_main:
            _restore_best(resume_path, resume_state, run_dir)
    validate_train(cfg, from_checkpoint=resume_state is not None)  # after the trust check: imports targets
    apply_threads(cfg.trainer.threads)
    if cfg.trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))

    trainer = build_trainer(cfg, run_dir, data_state=(resume_state or {}).get("data"), dist=dist)
    goal = _objective(cfg, trainer.tasks)  # before the first step: a sweep trial fails here, not after training
    log.info(f"run dir {run_dir}  device {trainer.device}  precision {trainer.precision}  "
             f"world size {dist.world_size}  parameters {sum(p.numel() for p in trainer.model.parameters()):,}")
    log.info(trainer.monitor.describe())
    with trainer.trackers:  # started by fit; closed (flushed, with the run's outcome) however the run ends
        trainer.fit(resume_state)
        return _test_best(trainer, run_dir, dist, goal)


def _test_best(trainer, run_dir: Path, dist: distributed.DistInfo, goal: objective.Objective) -> float | None:
    """The best checkpoint on val and test -> metrics.csv, curves.png, detections.png (detection tasks),
    results.json; returns optimized_metric."""
    # Final numbers come from the best checkpoint as written to disk: the same file `mtlrun eval` reads.
    # Its epoch and monitor value are read from that file too, so results.json describes the checkpoint its
    # metrics come from even if best.pt is not what the run last called best (see _restore_best).
    best_path = trainer.ckpt_dir / "best.pt"
    if not best_path.is_file():
        log.warning(f"{best_path} is missing (the resumed run's best epoch was not carried over); "
                    f"reporting the last checkpoint instead")
        best_path = trainer.ckpt_dir / "last.pt"
    best_state = checkpoint.load(best_path)
    best_epoch = best_state["epoch"]
    best_value = best_state["best_value"] if _is_own_best(best_state) else None
    if trainer.best_epoch is None:  # mtlrun/engine/monitor.py: a NaN monitor is never best
        log.warning(f"val/{trainer.monitor_key} was NaN at every epoch (nothing to measure in the val split), "
                    f"so no epoch is best: {best_path.name} is the checkpoint of the last epoch ({best_epoch})")
    elif best_epoch != trainer.best_epoch:
        log.warning(f"{best_path} holds epoch {best_epoch}, not the best epoch {trainer.best_epoch}; the final "
                    f"metrics are those of epoch {best_epoch}")
    trainer.model.load_state_dict(best_state["model"])
    val, test = trainer.evaluate("val"), trainer.evaluate("test")
    metrics = {**{f"val/{k}": v for k, v in val.items()}, **{f"test/{k}": v for k, v in test.items()}}
    value = goal.value(metrics, trainer.monitor.value(val))
    if dist.is_main:
        test_row = {"epoch": best_epoch, "split": "test", "step": best_state["global_step"], **test}
        write_metrics_csv(run_dir / "metrics.csv", trainer.history + [test_row])
        trainer.trackers.log_rows([test_row])
        plot_curves(trainer.history, trainer.tasks, run_dir / "curves.png", best_epoch=best_epoch)
        boxes = [t for t, task in trainer.tasks.items() if getattr(task, "kind", "") == "detection"]
        for t in boxes:  # the best checkpoint's boxes on a few test images
            plot_detections(trainer.model, trainer.tasks[t], trainer.data, trainer.device,
                            run_dir / ("detections.png" if len(boxes) == 1 else f"detections_{t}.png"))
        write_results(run_dir / "results.json", metrics, best_epoch=best_epoch,
                      monitor={"key": f"val/{trainer.monitor_key}", "value": best_value},
                      checkpoint=str(best_path), mtlrun_version=__version__,
                      optimized_metric={"key": goal.key, "value": value, "direction": goal.direction})
        log.info("\nbest checkpoint (epoch %s): %s\n%s", best_epoch, best_path,
                 results_table(trainer.tasks, {"val": val, "test": test}))
    if value is None:
        log.warning(f"optimized_metric {goal.key} is NaN: a sweeper counts this trial as failed")
    else:
        log.info(f"optimized_metric {goal.key} = {value!r} (to {goal.direction}): returned to Hydra")
    return value  # to Hydra: what a sweeper optimises

