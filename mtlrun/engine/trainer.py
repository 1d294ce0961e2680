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

from mtlrun import distributed
from mtlrun.data.loading import to_device
from mtlrun.engine import checkpoint
from mtlrun.engine.conflict import ConflictMeter
from mtlrun.engine.ddp import average_buffers, average_gradients, wrap_for_training
from mtlrun.engine.device import AMP_DTYPES, autocast, channels_last, resolve_device
from mtlrun.engine.evaluate import count_batches, evaluate_split
from mtlrun.engine.finite import (BufferGuard, all_finite, check_outputs_finite, first_nonfinite_step, grads_finite,
                                  nonfinite_tensors)
from mtlrun.engine.loggers.base import Trackers, grad_norm
from mtlrun.engine.monitor import Monitor
from mtlrun.engine.records import MISSING, write_metrics_csv
from mtlrun.engine.signals import StopSignals, TrainingInterrupted
from mtlrun.engine.train_sums import labelled_tasks, shown_losses, sums_size, train_means
from mtlrun.engine.trainer_config import TrainerConfig
from mtlrun.engine.trainer_state import restore_trainer, trainer_state
from mtlrun.errors import NonFiniteLossError, UsageError

log = logging.getLogger("mtlrun")
__all__ = ["Trainer", "TrainingInterrupted"]  # TrainingInterrupted: raised out of fit


class Trainer:
    """Trains `model` on `data` as the run's resolved `config` (a plain dict, the one checkpoints carry) says:
    its `trainer` section as a typed TrainerConfig, its `seed` for the shuffling order. Built by
    mtlrun.build.build_trainer, the one path from a config to a running Trainer."""

    def __init__(self, *, model: torch.nn.Module, tasks: dict, weighting, optimizer, scheduler_factory, data,
                 config: dict, run_dir: str | Path, dist: distributed.DistInfo | None = None, loggers=()):
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
        self.trackers = Trackers(loggers, is_main=self.dist.is_main)  # started by fit; the caller closes them
        self.grad_norm = None  # of the last step, a device tensor: set by grad_clip, else on log steps only

        self.model = model.to(self.device)  # the plain module: checkpoints and evaluation use it
        self.memory_format = channels_last if cfg.channels_last else None  # applied to every batch
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.weighting = weighting.to(self.device)  # set up by build_components, before the optimizer
        self._zero, self._ones = torch.zeros(1, device=self.device), torch.ones(len(tasks), device=self.device)
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
        self.buffer_guard = BufferGuard(self.model, self.accumulate) if cfg.skip_nonfinite else None

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
        self._warned_splits: set[str] = set()
        self.conflict = None  # gradient conflict at the shared representation, measured at log steps
        if cfg.conflict:
            if not getattr(model, "has_shared_representation", True):
                raise UsageError(f"trainer.conflict=true: {type(model).__name__} shares no representation "
                                 f"between tasks, so there is no gradient conflict to measure there")
            self.conflict = ConflictMeter(self.task_names, self.device)
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
        # summed over micro-batches on the device: mtlrun/engine/train_sums.py
        self.train_sums = torch.zeros(sums_size(len(self.task_names)), device=self.device)
        self.train_count = 0
        self._logged_sums, self._logged_count = self.train_sums.clone(), 0  # at the last log step
        self.window_trained = 0  # micro-batches trained in the current accumulation window
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

    def compute_losses(self, batch: dict, need_shared: bool = False
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Per-task losses, and the shared representation when the weighting works on it (or `need_shared`)."""
        if self.train_transform is not None:
            batch = self.train_transform(batch)
        if self.memory_format is not None:
            batch = self.memory_format(batch)
        modality_mask = batch.get("modality_mask")
        with self.autocast():
            if self.weighting.needs_shared or need_shared:
                preds, shared = self.train_model(batch["inputs"], return_shared=True, modality_mask=modality_mask)
            else:
                preds, shared = self.train_model(batch["inputs"], modality_mask=modality_mask), None
        masks = batch.get("label_mask", {})
        losses = {t: self.tasks[t].loss(preds[t], batch["targets"][t], masks.get(t)) for t in self.task_names}
        return losses, shared

    def training_step(self, batch: dict) -> None:
        """Forward, per-task losses, weighting.backward. Gradients accumulate until `optimizer_step`."""
        measure = self.conflict is not None and (self.global_step + 1) % int(self.cfg.log_every_n_steps) == 0
        if self.buffer_guard is not None:  # the forward updates BatchNorm's statistics even if the step is skipped
            self.buffer_guard.save(window_starts=self.batches_done % self.accumulate == 0)
        losses, shared = self.compute_losses(batch, need_shared=measure)
        stacked = torch.stack([losses[t].detach() for t in self.task_names])
        if self.cfg.skip_nonfinite and not all_finite(stacked, self.dist):
            self.skipped_steps += 1  # the one host sync a user opts into with skip_nonfinite
            self.buffer_guard.restore_step()
            return
        labelled = labelled_tasks(batch, self.task_names, self._ones)  # an unlabelled task's loss is no measurement
        if measure:  # before the weighting's backward frees the graph
            self.conflict.measure(losses, shared, labelled)
        regularizer = self.model.regularizer()  # e.g. soft sharing's distance penalty; None if there is none
        objective = self.weighting.backward(losses, scale=self._scale, shared=shared, extra=regularizer)
        reg = regularizer.detach().float().view(1) if regularizer is not None else self._zero
        # a method that weights the whole accumulation window knows its weights at the window's end only
        weights = torch.zeros_like(stacked) if self.weighting.weights_at_window_end else \
            self.weighting.current_weights().float()
        self.train_sums += torch.cat([stacked, weights, objective.detach().float().view(1), reg, labelled])
        self.train_count += 1
        self.window_trained += 1
        if not self.cfg.skip_nonfinite:  # remember the first bad step per task; checked at log time
            bad = ~torch.isfinite(stacked)
            self.first_nonfinite = torch.where((self.first_nonfinite < 0) & bad, self.global_step + 1,
                                               self.first_nonfinite)

    def end_window(self) -> None:
        """The accumulation window's last micro-batch is done: the weighting's last gradients (a method that
        aggregates the whole window does it here), and its weights logged once per trained micro-batch."""
        self.weighting.end_window()
        if self.weighting.weights_at_window_end and self.window_trained:
            n = len(self.task_names)
            self.train_sums[n:2 * n] += self.window_trained * self.weighting.current_weights().float()
        self.window_trained = 0

    def optimizer_step(self) -> None:
        params = self.optimizer.param_groups
        if self.cfg.skip_nonfinite and not self.scaler and not grads_finite(self.optimizer, self.dist):
            # a finite loss can still give inf gradients; the fp16 scaler makes this check itself
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.buffer_guard.restore_window()
            return
        if self.cfg.grad_clip:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            self.grad_norm = torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]],
                                                            float(self.cfg.grad_clip))
        elif self.trackers.active and (self.global_step + 1) % int(self.cfg.log_every_n_steps) == 0:
            self.grad_norm = grad_norm(self.optimizer, self.scaler)  # a log step: it is read back below
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
        self.trackers.start(self.config, self.run_dir, self.global_step)
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
                if self.cfg.skip_nonfinite:  # skipped steps keep the weights finite, not necessarily usable
                    check_outputs_finite(val, self.task_names, epoch + 1, self._last_good())
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
            self.weighting.start_micro_batch(first=self.batches_done % self.accumulate == 0, last=boundary)
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
                self.end_window()
                if self.dist.enabled:
                    average_gradients([*self.weighting.parameters(), *(self.model.parameters() if manual else ())])
                self.optimizer_step()
                if self.global_step % log_every == 0:
                    self._check_nonfinite()
                    bar.set_postfix(shown_losses(self.task_names, self._train_means()), refresh=False)
                    self._log_step()
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

    def _train_means(self, sums: torch.Tensor | None = None, count: int | None = None) -> dict[str, float]:
        sums, count = (self.train_sums, self.train_count) if sums is None else (sums, count)
        return train_means(self.task_names, sums, count)

    def _log_step(self) -> None:
        """The trackers' per-step scalars: the means since the last log step, the lr now, the last gradient norm."""
        if self.trackers.active:
            means = self._train_means(self.train_sums - self._logged_sums, self.train_count - self._logged_count)
            self._logged_sums, self._logged_count = self.train_sums.clone(), self.train_count
            del means["regularizer"]  # the per-epoch rows have it, for the models that have one
            extra = {} if self.grad_norm is None else {"grad_norm": float(self.grad_norm)}
            self.trackers.log_step({**means, "lr": self.optimizer.param_groups[0]["lr"], **extra}, self.global_step)

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
            average_buffers(self.model)  # trained without DDP's buffer broadcast
        loader = self.data.eval_loader(split, device=self.device, rank=self.dist.rank,
                                       world_size=self.dist.world_size)
        warn = split not in self._warned_splits  # which tasks are unlabelled does not change between epochs
        self._warned_splits.add(split)
        return evaluate_split(self.model, self.tasks, loader, device=self.device, precision=self.precision,
                              limit_batches=self.cfg.limit_eval_batches, split=split, warn=warn,
                              transform=self.memory_format)

    # ------------------------------------------------------------------------ history, checkpoints
    def _train_row(self, epoch: int) -> dict:
        means = self._train_means()  # weights: the mean over the epoch's steps
        row = {"epoch": epoch + 1, "split": "train", "step": self.global_step,
               "lr": self.optimizer.param_groups[0]["lr"], **means}
        if self.model.regularizer() is None:
            del row["regularizer"]
        self.weighting.on_epoch_end({t: means[f"{t}/loss"] for t in self.task_names})
        if self.conflict is not None:
            row.update(self.conflict.epoch_row(self.dist))  # collective under DDP: every rank gets here
        if self.skipped_steps:
            row["skipped_steps"] = self.skipped_steps
        self._reset_train_sums()
        return row

    def _end_epoch(self, epoch: int, train_row: dict, val: dict[str, float]) -> None:
        value = self.monitor.value(val)
        improved = self.monitor.update(epoch + 1, value)
        # no epoch measured yet (monitor NaN): the latest checkpoint stands in as best.pt, so best.pt exists
        stand_in = self.monitor.best_epoch is None
        val_row = {"epoch": epoch + 1, "split": "val", "step": self.global_step, **val, "monitor": value}
        self.history += [train_row, val_row]
        self.trackers.log_rows([train_row, val_row])
        self.epoch, self.batches_done = epoch + 1, 0
        fmt = lambda v: MISSING if math.isnan(v) else f"{v:.4f}"  # noqa: E731 - NaN: nothing measured
        shown = "  ".join(f"{k} {fmt(v)}" for k, v in val.items() if not k.endswith("/loss"))
        log.info(f"epoch {epoch + 1}/{self.cfg.max_epochs}  train loss {train_row['objective']:.4f}  "
                 f"val {shown}  monitor {fmt(value)}{'  (best)' if improved else ''}")
        self._save_last(best=improved or stand_in)

    def state_dict(self) -> dict:
        return trainer_state(self)

    def load_state(self, state: dict) -> None:
        restore_trainer(self, state)

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
        return self.signals.agreed(self.dist, self.device, at_log_step)
