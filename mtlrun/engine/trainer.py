"""The training loop: device placement, AMP, accumulation, clipping, validation, checkpoints, DDP.

Read top to bottom: `fit` runs epochs; `_train_epoch` cuts the epoch's batches into accumulation windows;
`step` is one optimizer step over one window: for each micro-batch `_train_micro_batch` (forward + losses +
weighting.backward), then the weighting's end of the window, the DDP average, and `_optimizer_step` (clip,
step). `evaluate` is one evaluation pass. Nothing in the step reads a value back to the host: losses are summed
on the device (TrainSums) and looked at every `log_every_n_steps` steps and at the end of an epoch.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from mtlrun import distributed
from mtlrun.data.loading import to_device
from mtlrun.diagnostics.conflict import ConflictMeter
from mtlrun.engine.ddp import average_buffers, average_gradients, wrap_for_training
from mtlrun.engine.device import AMP_DTYPES, autocast, channels_last, resolve_device, step_scheduler
from mtlrun.engine.evaluate import count_batches, evaluate_split
from mtlrun.engine.finite import BufferGuard, all_finite, check_outputs_finite, first_nonfinite_step, grads_finite
from mtlrun.engine.logger.base import Trackers
from mtlrun.diagnostics.gradients import grad_norm
from mtlrun.engine.monitor import Monitor
from mtlrun.engine.records import MISSING
from mtlrun.engine.signals import StopSignals, TrainingInterrupted
from mtlrun.engine.sources import source_losses
from mtlrun.engine.train_sums import TrainSums, labelled_tasks, shown_losses
from mtlrun.engine.trainer_config import TrainerConfig
from mtlrun.engine.trainer_state import last_good, restore_trainer, save_checkpoints, trainer_state
from mtlrun.errors import NonFiniteLossError, UsageError

log = logging.getLogger("mtlrun")
__all__ = ["Trainer", "TrainingInterrupted", "Window"]  # TrainingInterrupted: raised out of fit


class Window:
    """`size` micro-batches of an accumulation window, read from `batches` one at a time as `Trainer.step`
    trains them: one on the device at a time, and the loader read in the same order as batch by batch."""

    def __init__(self, batches, size: int):
        self.batches, self.size = batches, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return itertools.islice(self.batches, self.size)


class Trainer:
    """Trains `model` on `data` as the run's resolved `config` (a plain dict, the one checkpoints carry) says:
    its `trainer` section as a typed TrainerConfig, its `seed` for the shuffling order. Built by
    mtlrun.build.build_trainer, the one path from a config to a running Trainer. `total_steps`: the optimizer
    steps the LR schedule spans (default: those of `trainer.max_epochs` epochs)."""

    def __init__(self, *, model: torch.nn.Module, tasks: dict, weighting, optimizer, scheduler_factory, data,
                 config: dict, run_dir: str | Path, dist: distributed.DistInfo | None = None, loggers=(),
                 total_steps: int | None = None):
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
        # several backwards (per-task gradients) or forwards (data=mixture, sampling=all) a step: no DDP reducer
        self.own_reduction = getattr(weighting, "multi_backward", False) or getattr(data, "multi_forward", False)
        self.train_model = wrap_for_training(self.model, data=data, device=self.device,
                                             distributed=self.dist.enabled, sync_batchnorm=cfg.sync_batchnorm,
                                             compile=cfg.compile,  # what the training step calls
                                             reducer=not self.own_reduction)

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
        self.total_steps = steps_per_epoch * int(cfg.max_epochs) if total_steps is None else int(total_steps)
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
        self._reset_epoch_state()
        self._warned_splits: set[str] = set()
        self.conflict = None  # gradient conflict at the shared representation, measured at log steps
        if cfg.conflict:
            if not getattr(model, "has_shared_representation", True):
                raise UsageError(f"trainer.conflict=true: {type(model).__name__} shares no representation "
                                 f"between tasks, so there is no gradient conflict to measure there")
            self.conflict = ConflictMeter(self.task_names, self.device)
        self.signals = StopSignals(lambda: last_good(self.ckpt_dir), announce=self.dist.is_main)

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
    def _reset_epoch_state(self) -> None:
        self.train_sums = TrainSums(self.task_names, self.device)  # the epoch's train row, on the device
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
        if "sources" in batch:  # data=mixture, sampling=all: a forward per source, each task's loss on its own data
            return source_losses(self.compute_losses, batch, self.task_names, need_shared)
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

    def is_log_step(self, step: int) -> bool:
        """Whether optimizer step `step` (counted from 1) reads the losses back to the host: NaN check, trackers,
        progress bar; the gradient norm and the gradient conflict are measured at such steps only."""
        return step % int(self.cfg.log_every_n_steps) == 0

    def step(self, micro_batches) -> bool:
        """One optimizer step over one accumulation window: `micro_batches` (a list, or any iterable with a
        len, such as fit's Window, which reads the loader one batch at a time), each trained in turn, the
        gradients accumulating; the weighting's end of the window; DDP's average of the gradients its reducer
        does not see; clipping and the optimizer step. True when the step just taken is a log step: the losses
        were checked for NaN/inf and the trackers got the means since the last one."""
        last = len(micro_batches) - 1
        measure = self.conflict is not None and self.is_log_step(self.global_step + 1)
        manual = self.dist.enabled and self.own_reduction
        trained = 0  # micro-batches not skipped for a non-finite loss
        for i, batch in enumerate(micro_batches):
            self.weighting.start_micro_batch(first=i == 0, last=i == last)
            # DDP: all-reduce gradients only on the micro-batch that ends the window
            sync = self.train_model.no_sync() if self.dist.enabled and not (i == last or manual) else nullcontext()
            with sync:
                trained += self._train_micro_batch(to_device(batch, self.device), window_starts=i == 0,
                                                   measure=measure)
        self._end_window(trained)
        if self.dist.enabled:
            average_gradients([*self.weighting.parameters(), *(self.model.parameters() if manual else ())])
        self._optimizer_step()
        logged = self.is_log_step(self.global_step)  # not the step before when this one was skipped
        if logged:
            self.check_nonfinite()
            self._log_step()
        return logged

    def _train_micro_batch(self, batch: dict, window_starts: bool, measure: bool) -> bool:
        """Forward, per-task losses, weighting.backward; False when skipped (skip_nonfinite and a NaN/inf loss).
        `measure`: the gradient conflict too (a log step with trainer.conflict)."""
        if self.buffer_guard is not None:  # the forward updates BatchNorm's statistics even if the step is skipped
            self.buffer_guard.save(window_starts=window_starts)
        losses, shared = self.compute_losses(batch, need_shared=measure)
        stacked = torch.stack([losses[t].detach() for t in self.task_names])
        if self.cfg.skip_nonfinite and not all_finite(stacked, self.dist):
            self.skipped_steps += 1  # the one host sync a user opts into with skip_nonfinite
            self.buffer_guard.restore_step()
            return False
        labelled = labelled_tasks(batch, self.task_names, self._ones)  # an unlabelled task's loss is no measurement
        if measure:  # before the weighting's backward frees the graph
            self.conflict.measure(losses, shared, labelled)
        regularizer = self.model.regularizer()  # e.g. soft sharing's distance penalty; None if there is none
        objective = self.weighting.backward(losses, scale=self._scale, shared=shared, extra=regularizer)
        reg = regularizer.detach().float().view(1) if regularizer is not None else self._zero
        # a method that weights the whole accumulation window knows its weights at the window's end only
        weights = torch.zeros_like(stacked) if self.weighting.weights_at_window_end else \
            self.weighting.current_weights().float()
        self.train_sums.add(stacked, weights, objective.detach().float().view(1), reg, labelled)
        if not self.cfg.skip_nonfinite:  # remember the first bad step per task; checked at log time
            bad = ~torch.isfinite(stacked)
            self.first_nonfinite = torch.where((self.first_nonfinite < 0) & bad, self.global_step + 1,
                                               self.first_nonfinite)
        return True

    def _end_window(self, trained: int) -> None:
        """The window's last micro-batch is done: the weighting's last gradients (a method that aggregates the
        whole window does it here), and its weights logged once per `trained` micro-batch."""
        self.weighting.end_window()
        if self.weighting.weights_at_window_end and trained:
            self.train_sums.weights += trained * self.weighting.current_weights().float()

    def _optimizer_step(self) -> None:
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
        elif self.trackers.active and self.is_log_step(self.global_step + 1):
            self.grad_norm = grad_norm(self.optimizer, self.scaler)  # a log step: it is read back below
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_scheduler(self.scheduler, self.scaler is not None and self.global_step == 0)
        self.global_step += 1

    def _log_step(self) -> None:
        """The trackers' per-step scalars: the means since the last log step, the lr now, the last gradient norm."""
        if self.trackers.active:
            means = self.train_sums.means_since_last_log()
            del means["regularizer"]  # the per-epoch rows have it, for the models that have one
            extra = {} if self.grad_norm is None else {"grad_norm": float(self.grad_norm)}
            self.trackers.log_step({**means, "lr": self.optimizer.param_groups[0]["lr"], **extra}, self.global_step)

    def check_nonfinite(self) -> None:
        """Raise NonFiniteLossError naming the first task and step with a NaN/inf loss so far (one host read)."""
        first = first_nonfinite_step(self.first_nonfinite.clone(), self.dist)
        bad = [(int(s), t) for s, t in zip(first.tolist(), self.task_names) if s >= 0]
        if bad:
            step, task = min(bad)
            raise NonFiniteLossError(
                f"non-finite loss for task '{task}' at step {step} (epoch {self.epoch + 1}); the last good "
                f"checkpoint is kept. Try a lower optim.lr, trainer.grad_clip=1.0, or "
                f"trainer.skip_nonfinite=true to skip such steps")

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
                    raise TrainingInterrupted(self.signals.signum, save_checkpoints(self))
                train_row = self._train_row(epoch)
                val = self.evaluate("val")
                if self.cfg.skip_nonfinite:  # skipped steps keep the weights finite, not necessarily usable
                    check_outputs_finite(val, self.task_names, epoch + 1, last_good(self.ckpt_dir))
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
        skip = self.batches_done  # > 0 only right after a resume (a window boundary)
        loader = self.data.train_loader(epoch=epoch, seed=self.seed, device=self.device, rank=self.dist.rank,
                                        world_size=self.dist.world_size, skip_batches=skip)
        self.model.train()
        total = self.batches_per_epoch
        bar = tqdm(total=total, initial=skip, desc=f"epoch {epoch + 1}/{self.cfg.max_epochs}", leave=False,
                   disable=not (self.cfg.progress_bar and self.dist.is_main), mininterval=0.5, dynamic_ncols=True)
        batches = iter(loader)
        while self.batches_done < total:
            # windows of `accumulate` micro-batches from the epoch's start; the last one may be shorter
            size = min(self.accumulate - self.batches_done % self.accumulate, total - self.batches_done)
            logged = self.step(Window(batches, size))
            self.batches_done += size
            bar.update(size)
            if logged:
                bar.set_postfix(shown_losses(self.task_names, self.train_sums.means()), refresh=False)
            if self._should_stop(at_log_step=logged):
                break
        else:  # read one batch past limit_train_batches, as the loop always has: a dataset whose augmentation
            next(batches, None)  # draws from the global RNG as a batch is read (CIFAR-10) keeps its later epochs
        bar.close()
        self.check_nonfinite()
        if self.skipped_steps:
            log.warning(f"epoch {epoch + 1}: skipped {self.skipped_steps} step(s) with a non-finite loss or "
                        f"gradient ({self.train_sums.count} batch(es) trained)")
            if self.train_sums.count == 0:
                raise NonFiniteLossError(
                    f"every batch of epoch {epoch + 1} had a non-finite loss (the weights are no longer "
                    f"finite); the last good checkpoint is kept. Try a lower optim.lr or trainer.grad_clip=1.0")

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        if self.dist.enabled and self.own_reduction:
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
        means = self.train_sums.means()  # weights: the mean over the epoch's steps
        row = {"epoch": epoch + 1, "split": "train", "step": self.global_step,
               "lr": self.optimizer.param_groups[0]["lr"], **means,  # and what the data says of the epoch
               **self.data.epoch_row(epoch, self.seed, self.batches_per_epoch, self.dist.world_size)}
        if self.model.regularizer() is None:
            del row["regularizer"]
        self.weighting.on_epoch_end({t: means[f"{t}/loss"] for t in self.task_names})
        if self.conflict is not None:
            row.update(self.conflict.epoch_row(self.dist))  # collective under DDP: every rank gets here
        if self.skipped_steps:
            row["skipped_steps"] = self.skipped_steps
        self._reset_epoch_state()
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
        save_checkpoints(self, best=improved or stand_in)

    def state_dict(self) -> dict:
        return trainer_state(self)

    def load_state(self, state: dict) -> None:
        restore_trainer(self, state)

    # --------------------------------------------------------------------------------------- signals
    def _should_stop(self, at_log_step: bool) -> bool:
        return self.signals.agreed(self.dist, self.device, at_log_step)
