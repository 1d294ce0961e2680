"""The training loop: device placement, AMP, accumulation, clipping, validation, checkpoints, DDP.

Read top to bottom: `fit` runs epochs; `_train_epoch` runs steps; `training_step` is forward + losses +
weighting.backward; `optimizer_step` clips and steps. Nothing in the step reads a value back to the host:
losses are summed on the device and looked at every `log_every_n_steps` steps and at the end of an epoch.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from mtlrun import __version__, distributed
from mtlrun.data.loading import to_device
from mtlrun.engine import checkpoint
from mtlrun.engine.ddp import average_buffers, average_gradients, wrap_for_training
from mtlrun.engine.device import AMP_DTYPES, autocast, channels_last, resolve_device
from mtlrun.engine.evaluate import count_batches, evaluate_split
from mtlrun.engine.finite import all_finite, first_nonfinite_step, grads_finite, nonfinite_tensors
from mtlrun.engine.monitor import Monitor
from mtlrun.engine.records import write_metrics_csv
from mtlrun.engine.signals import StopSignals, TrainingInterrupted
from mtlrun.engine.trainer_config import TrainerConfig
from mtlrun.errors import NonFiniteLossError, UsageError

log = logging.getLogger("mtlrun")
__all__ = ["Trainer", "TrainingInterrupted"]  # TrainingInterrupted: raised out of fit


class Trainer:
    """Trains `model` on `data` as the run's resolved `config` (a plain dict, the one checkpoints carry) says:
    its `trainer` section as a typed TrainerConfig, its `seed` for the shuffling order. Built by
    mtlrun.build.build_trainer, the one path from a config to a running Trainer."""

    def __init__(self, *, model: torch.nn.Module, tasks: dict, weighting, optimizer, scheduler_factory, data,
                 config: dict, run_dir: str | Path, dist: distributed.DistInfo | None = None):
        cfg = self.cfg = TrainerConfig.from_config(config["trainer"])
        self.config = config
        self.seed = int(config["seed"])
        self.dist = dist or distributed.dist_info()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.tasks = tasks
        self.task_names = list(tasks)
        self.data = data
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

        self.model = model.to(self.device)  # the plain module: checkpoints and evaluation use it
        self.memory_format = channels_last if cfg.channels_last else None  # applied to every batch
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.weighting = weighting.to(self.device)  # set up by build_components, before the optimizer
        self._zero = torch.zeros(1, device=self.device)
        self.optimizer = optimizer
        self.train_model = wrap_for_training(self.model, data=data, device=self.device,
                                             distributed=self.dist.enabled, sync_batchnorm=cfg.sync_batchnorm,
                                             compile=cfg.compile,  # what the training step calls
                                             reducer=not getattr(weighting, "multi_backward", False))

        self.precision = str(cfg.precision)
        self.amp_dtype = AMP_DTYPES[self.precision]
        self.scaler = None
        if self.amp_dtype is torch.float16:  # bf16 has fp32's range and needs no loss scaling
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.accumulate = int(cfg.accumulate)

        self.train_transform = data.train_transform()  # e.g. modality dropout, on the device
        n_batches = count_batches(cfg.limit_train_batches, data.train_batches(self.dist.world_size))
        self.batches_per_epoch = n_batches
        steps_per_epoch = math.ceil(n_batches / self.accumulate)
        self.total_steps = steps_per_epoch * int(cfg.max_epochs)
        try:
            self.scheduler = scheduler_factory(optimizer, total_steps=self.total_steps)
        except TypeError as exc:  # a scheduler config whose keys its factory does not take
            raise UsageError(f"scheduler: {exc}; a scheduler is called as f(optimizer, total_steps, "
                             f"**scheduler config)") from exc

        # loop position and running state (all of it goes into checkpoints)
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0
        self.history: list[dict] = []
        self.monitor = Monitor(cfg.monitor, cfg.monitor_mode, tasks, cfg.early_stopping.min_delta,
                               cfg.early_stopping.patience)
        self._reset_train_sums()
        self.signals = StopSignals(self._last_good, announce=self.dist.is_main)

    @property
    def best_epoch(self) -> int | None:
        return self.monitor.best_epoch

    @property
    def best_value(self) -> float | None:
        return self.monitor.best_value

    @property
    def monitor_key(self) -> str:
        return self.monitor.key

    # ----------------------------------------------------------------------------------------- set-up
    def _reset_train_sums(self) -> None:
        # summed over micro-batches on the device: per-task losses, per-task weights, objective, regularizer
        self.train_sums = torch.zeros(2 * len(self.task_names) + 2, device=self.device)
        self.train_count = 0
        self.first_nonfinite = torch.full((len(self.task_names),), -1, dtype=torch.long, device=self.device)
        self.skipped_steps = 0

    def autocast(self):
        return autocast(self.device, self.precision)

    # -------------------------------------------------------------------------------------- the step
    def _scale(self, loss: torch.Tensor) -> torch.Tensor:
        """What every loss goes through before backward: 1/accumulate and the fp16 loss scale."""
        if self.accumulate > 1:
            loss = loss / self.accumulate
        return self.scaler.scale(loss) if self.scaler else loss

    def compute_losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Per-task losses, and the shared representation when the weighting works on it."""
        if self.train_transform is not None:
            batch = self.train_transform(batch)
        if self.memory_format is not None:
            batch = self.memory_format(batch)
        modality_mask = batch.get("modality_mask")
        with self.autocast():
            if self.weighting.needs_shared:
                preds, shared = self.train_model(batch["inputs"], return_shared=True, modality_mask=modality_mask)
            else:
                preds, shared = self.train_model(batch["inputs"], modality_mask=modality_mask), None
        masks = batch.get("label_mask", {})
        losses = {t: self.tasks[t].loss(preds[t], batch["targets"][t], masks.get(t)) for t in self.task_names}
        return losses, shared

    def training_step(self, batch: dict) -> None:
        """Forward, per-task losses, weighting.backward. Gradients accumulate until `optimizer_step`."""
        losses, shared = self.compute_losses(batch)
        stacked = torch.stack([losses[t].detach() for t in self.task_names])
        if self.cfg.skip_nonfinite and not all_finite(stacked, self.dist):
            self.skipped_steps += 1  # the one host sync a user opts into with skip_nonfinite
            return
        regularizer = self.model.regularizer()  # e.g. soft sharing's distance penalty; None if there is none
        objective = self.weighting.backward(losses, scale=self._scale, shared=shared, extra=regularizer)
        reg = regularizer.detach().float().view(1) if regularizer is not None else self._zero
        self.train_sums += torch.cat([stacked, self.weighting.current_weights().float(),
                                      objective.detach().float().view(1), reg])
        self.train_count += 1
        if not self.cfg.skip_nonfinite:  # remember the first bad step per task; checked at log time
            bad = ~torch.isfinite(stacked)
            self.first_nonfinite = torch.where((self.first_nonfinite < 0) & bad, self.global_step + 1,
                                               self.first_nonfinite)

    def optimizer_step(self) -> None:
        params = self.optimizer.param_groups
        if self.cfg.skip_nonfinite and not self.scaler and not grads_finite(self.optimizer, self.dist):
            # a finite loss can still give inf gradients; the fp16 scaler makes this check itself
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.cfg.grad_clip:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], float(self.cfg.grad_clip))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1

    # -------------------------------------------------------------------------------------- the loop
    def fit(self, resume: dict | None = None) -> dict:
        if resume is not None:
            self.load_state(resume)
        start = time.perf_counter()
        self.signals.install()
        stopping = False
        try:
            for epoch in range(self.epoch, int(self.cfg.max_epochs)):
                self.epoch = epoch
                self._train_epoch(epoch)
                if self._should_stop(at_log_step=True):
                    stopping = True
                    raise TrainingInterrupted(self.signals.signum, self._save_last())
                train_row = self._train_row(epoch)
                val = self.evaluate("val")
                self._end_epoch(epoch, train_row, val)
                if self.monitor.should_stop():
                    log.info(f"early stopping: no improvement of {self.monitor_key} for "
                             f"{self.monitor.epochs_since_best} epochs")
                    break
        except TrainingInterrupted:
            stopping = True
            raise
        finally:
            self.signals.restore(leaving=stopping)
        log.info(f"training took {time.perf_counter() - start:.1f}s; best epoch {self.best_epoch}")
        return {"best_epoch": self.best_epoch, "best_value": self.best_value}

    def _train_epoch(self, epoch: int) -> None:
        skip = self.batches_done  # > 0 only right after a resume
        loader = self.data.train_loader(epoch=epoch, seed=self.seed, device=self.device, rank=self.dist.rank,
                                        world_size=self.dist.world_size, skip_batches=skip)
        self.model.train()
        total = self.batches_per_epoch
        bar = tqdm(total=total, initial=skip, desc=f"epoch {epoch + 1}/{self.cfg.max_epochs}", leave=False,
                   disable=not (self.cfg.progress_bar and self.dist.is_main), mininterval=0.5, dynamic_ncols=True)
        log_every = int(self.cfg.log_every_n_steps)
        for batch in loader:
            if self.batches_done >= total:
                break
            batch = to_device(batch, self.device)
            boundary = (self.batches_done + 1) % self.accumulate == 0 or self.batches_done + 1 == total
            # DDP: all-reduce gradients only on the micro-batch that ends an accumulation window. A
            # weighting that differentiates several times per step (per-task gradients) always runs
            # outside DDP's reducer, which allows one backward per forward (its model is not DDP-wrapped); its
            # gradients are averaged below.
            manual = self.dist.enabled and getattr(self.weighting, "multi_backward", False)
            sync = self.train_model.no_sync() if self.dist.enabled and not (boundary or manual) else nullcontext()
            with sync:
                self.training_step(batch)
            self.batches_done += 1
            bar.update(1)
            if boundary:
                if self.dist.enabled:
                    average_gradients([*self.weighting.parameters(), *(self.model.parameters() if manual else ())],
                                      self.dist.world_size)
                self.optimizer_step()
                if self.global_step % log_every == 0:
                    self._check_nonfinite()
                    bar.set_postfix(self._running_losses(), refresh=False)
                if self._should_stop(at_log_step=self.global_step % log_every == 0):
                    break
        bar.close()
        self._check_nonfinite()
        if self.skipped_steps:
            log.warning(f"epoch {epoch + 1}: skipped {self.skipped_steps} step(s) with a non-finite loss or "
                        f"gradient ({self.train_count} batch(es) trained)")
            if self.train_count == 0:
                raise NonFiniteLossError(
                    f"every batch of epoch {epoch + 1} had a non-finite loss (the weights are no longer "
                    f"finite); the last good checkpoint is kept. Try a lower optim.lr or trainer.grad_clip=1.0")

    def _train_means(self) -> dict[str, float]:
        means = (self.train_sums / max(1, self.train_count)).tolist()
        n = len(self.task_names)
        out = {f"{t}/loss": v for t, v in zip(self.task_names, means[:n])}
        out.update({f"{t}/weight": v for t, v in zip(self.task_names, means[n:2 * n])})
        out["objective"], out["regularizer"] = means[2 * n], means[2 * n + 1]
        return out

    def _running_losses(self) -> dict[str, str]:
        means = self._train_means()
        shown = {t: f"{means[f'{t}/loss']:.3f}" for t in self.task_names}
        shown["loss"] = f"{means['objective']:.3f}"
        return shown

    def _check_nonfinite(self) -> None:
        first = first_nonfinite_step(self.first_nonfinite.clone(), self.dist)
        bad = [(int(s), t) for s, t in zip(first.tolist(), self.task_names) if s >= 0]
        if bad:
            step, task = min(bad)
            raise NonFiniteLossError(
                f"non-finite loss for task '{task}' at step {step} (epoch {self.epoch + 1}); the last good "
                f"checkpoint is kept. Try a lower optim.lr, trainer.grad_clip=1.0, or "
                f"trainer.skip_nonfinite=true to skip such steps")

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        if self.dist.enabled and getattr(self.weighting, "multi_backward", False):
            average_buffers(self.model, self.dist.world_size)  # trained without DDP's buffer broadcast
        loader = self.data.eval_loader(split, device=self.device, rank=self.dist.rank,
                                       world_size=self.dist.world_size)
        return evaluate_split(self.model, self.tasks, loader, device=self.device, precision=self.precision,
                              limit_batches=self.cfg.limit_eval_batches, transform=self.memory_format)

    # ------------------------------------------------------------------------ history, checkpoints
    def _train_row(self, epoch: int) -> dict:
        means = self._train_means()  # weights: the mean over the epoch's steps
        row = {"epoch": epoch + 1, "split": "train", "step": self.global_step,
               "lr": self.optimizer.param_groups[0]["lr"], **means}
        if self.model.regularizer() is None:
            del row["regularizer"]
        self.weighting.on_epoch_end({t: means[f"{t}/loss"] for t in self.task_names})
        if self.skipped_steps:
            row["skipped_steps"] = self.skipped_steps
        self._reset_train_sums()
        return row

    def _end_epoch(self, epoch: int, train_row: dict, val: dict[str, float]) -> None:
        value = self.monitor.value(val)
        improved = self.monitor.update(epoch + 1, value)
        val_row = {"epoch": epoch + 1, "split": "val", "step": self.global_step, **val, "monitor": value}
        self.history += [train_row, val_row]
        self.epoch, self.batches_done = epoch + 1, 0
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items() if not k.endswith("/loss"))
        log.info(f"epoch {epoch + 1}/{self.cfg.max_epochs}  train loss {train_row['objective']:.4f}  "
                 f"val {shown}  monitor {value:.4f}{'  (best)' if improved else ''}")
        self._save_last(best=improved)

    def state_dict(self) -> dict:
        return {
            "mtlrun_version": __version__, "format": checkpoint.FORMAT, "config": self.config,
            "model": self.model.state_dict(), "weighting": self.weighting.state_dict(),
            "data": self.data.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": distributed.gather_objects(checkpoint.rng_state()),
            "epoch": self.epoch, "batches_done": self.batches_done, "global_step": self.global_step,
            "train_sums": self.train_sums.cpu(), "train_count": self.train_count,
            "skipped_steps": self.skipped_steps, **self.monitor.state_dict(), "history": self.history,
        }

    def load_state(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:  # e.g. `resume=... tasks.only=[left]`: a different model than was saved
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"resume: the checkpoint's weights do not fit the model these overrides build "
                             f"({first}); resume with the checkpoint's own tasks, backbone and arch") from exc
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            log.warning(f"checkpoint has RNG states of {len(rng)} rank(s), this run has "
                        f"{self.dist.world_size}; the run continues but will not be bit-identical")
        checkpoint.set_rng_state(rng[min(self.dist.rank, len(rng) - 1)])
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.global_step = state["global_step"]
        self.train_sums = state["train_sums"].to(self.device)
        self.train_count, self.skipped_steps = state["train_count"], state["skipped_steps"]
        self.monitor.load_state_dict(state)
        self.history = list(state["history"])

    def _save_last(self, best: bool = False) -> Path:
        """last.pt, then best.pt when this epoch is the best. last.pt records the best epoch, so if the run
        dies between the two writes, resume sees that last.pt is itself the best and restores best.pt from
        it (train._restore_best). No checkpoint ever holds non-finite weights."""
        bad = nonfinite_tensors(self.model, self.weighting)  # one host sync per checkpoint
        if bad:
            last = self._last_good()
            kept = f"{last} is the last good checkpoint" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"the weights are no longer finite after {self.global_step} step(s) (e.g. {', '.join(bad[:3])}); "
                f"nothing was saved, {kept}. Try a lower optim.lr or trainer.grad_clip=1.0")
        state = self.state_dict()  # collective under DDP (RNG states): every rank builds it
        path = self.ckpt_dir / "last.pt"
        if self.dist.is_main:
            with self.signals.saving():
                checkpoint.save(path, state)
                if best:
                    checkpoint.save(self.ckpt_dir / "best.pt", state)
                write_metrics_csv(self.run_dir / "metrics.csv", self.history)
        distributed.barrier()
        return path

    def _last_good(self) -> Path | None:
        path = self.ckpt_dir / "last.pt"
        return path if path.is_file() else None

    # --------------------------------------------------------------------------------------- signals
    def _should_stop(self, at_log_step: bool) -> bool:
        if not self.dist.enabled:
            return self.signals.signum is not None
        if not at_log_step:  # ranks agree on stopping only at log steps, with one tiny all-reduce
            return False
        flag = torch.tensor([self.signals.signum or 0], device=self.device)
        distributed.all_reduce_([flag], op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            self.signals.signum = int(flag.item())
        return self.signals.signum is not None

