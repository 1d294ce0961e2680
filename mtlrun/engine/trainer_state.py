"""What a checkpoint holds of a Trainer (the run-dir contract of docs/architecture.md), writing it, and putting it back.

Everything needed to continue exactly where the run stopped: weights, weighting state, the data module's
fitted state, optimizer, scheduler and fp16 scaler, every rank's RNG state, the loop position, the epoch's
running sums, the monitor's best epoch and the history. Building it is collective under DDP (the RNG states
are gathered), so every rank calls `trainer_state`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtlrun import __version__, distributed
from mtlrun.engine import checkpoint
from mtlrun.engine.finite import nonfinite_tensors
from mtlrun.engine.records import write_metrics_csv
from mtlrun.engine.train_sums import TrainSums
from mtlrun.errors import NonFiniteLossError, UsageError

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
        "train_sums": trainer.train_sums.packed.cpu(), "train_count": trainer.train_sums.count,
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
    trainer.train_sums = TrainSums.from_checkpoint(trainer.task_names, trainer.device, state["train_sums"],
                                                   state["train_count"])
    trainer.skipped_steps = state["skipped_steps"]
    trainer.monitor.load_state_dict(state)
    trainer.history = list(state["history"])
    trainer.trackers.resume_from(state.get("trackers"))  # absent in checkpoints of earlier versions


def save_checkpoints(trainer, best: bool = False) -> Path:
    """last.pt, then best.pt when this epoch is the best. last.pt records the best epoch, so if the run dies
    between the two writes, resume sees that last.pt is itself the best and restores best.pt from it
    (train._restore_best). No checkpoint ever holds non-finite weights."""
    bad = nonfinite_tensors(trainer.model, trainer.weighting)  # one host sync per checkpoint
    if bad:
        last = last_good(trainer.ckpt_dir)
        kept = f"{last} is the last good checkpoint" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"the weights are no longer finite after {trainer.global_step} step(s) (e.g. {', '.join(bad[:3])}); "
            f"nothing was saved, {kept}. Try a lower optim.lr or trainer.grad_clip=1.0")
    state = trainer_state(trainer)  # collective under DDP (RNG states): every rank builds it
    path = trainer.ckpt_dir / "last.pt"
    if trainer.dist.is_main:
        with trainer.signals.saving():
            checkpoint.save(path, state)
            if best:
                checkpoint.save(trainer.ckpt_dir / "best.pt", state)
            write_metrics_csv(trainer.run_dir / "metrics.csv", trainer.history)
    distributed.barrier()
    return path


def last_good(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint on disk, if any."""
    path = ckpt_dir / "last.pt"
    return path if path.is_file() else None
