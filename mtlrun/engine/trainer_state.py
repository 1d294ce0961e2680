"""What a checkpoint holds of a Trainer (the run-dir contract in shared/DESIGN.md), and putting it back.

Everything needed to continue exactly where the run stopped: weights, weighting state, the data module's
fitted state, optimizer, scheduler and fp16 scaler, every rank's RNG state, the loop position, the epoch's
running sums, the monitor's best epoch and the history. Building it is collective under DDP (the RNG states
are gathered), so every rank calls `trainer_state`.
"""

from __future__ import annotations

import logging

from mtlrun import __version__, distributed
from mtlrun.engine import checkpoint
from mtlrun.engine.train_sums import from_checkpoint
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")


def trainer_state(trainer) -> dict:
    return {
        "mtlrun_version": __version__, "format": checkpoint.FORMAT, "config": trainer.config,
        "model": trainer.model.state_dict(), "weighting": trainer.weighting.state_dict(),
        "data": trainer.data.state_dict(),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "rng": distributed.gather_objects(checkpoint.rng_state()),
        "epoch": trainer.epoch, "batches_done": trainer.batches_done, "global_step": trainer.global_step,
        "train_sums": trainer.train_sums.cpu(), "train_count": trainer.train_count,
        "skipped_steps": trainer.skipped_steps, **trainer.monitor.state_dict(), "history": trainer.history,
        "trackers": trainer.trackers.run_ids(),  # {"mlflow": run id, ...}: a resumed run continues those runs
    }


def restore_trainer(trainer, state: dict) -> None:
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as exc:  # e.g. `resume=... tasks.only=[left]`: a different model than was saved
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"resume: the checkpoint's weights do not fit the model these overrides build "
                         f"({first}); resume with the checkpoint's own tasks, backbone and arch") from exc
    trainer.weighting.load_state_dict(state["weighting"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    rng, dist = state["rng"], trainer.dist
    if len(rng) != dist.world_size:
        log.warning(f"checkpoint has RNG states of {len(rng)} rank(s), this run has "
                    f"{dist.world_size}; the run continues but will not be bit-identical")
    checkpoint.set_rng_state(rng[min(dist.rank, len(rng) - 1)])
    trainer.epoch, trainer.batches_done = state["epoch"], state["batches_done"]
    trainer.global_step = state["global_step"]
    trainer.train_sums = from_checkpoint(state["train_sums"], len(trainer.task_names),
                                         state["train_count"]).to(trainer.device)
    trainer.train_count, trainer.skipped_steps = state["train_count"], state["skipped_steps"]
    trainer._logged_sums, trainer._logged_count = trainer.train_sums.clone(), trainer.train_count
    trainer.monitor.load_state_dict(state)
    trainer.history = list(state["history"])
    trainer.trackers.resume_from(state.get("trackers"))  # absent in checkpoints of earlier versions
