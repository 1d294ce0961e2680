"""The training loop: device placement, AMP, accumulation, clipping, validation, checkpoints, DDP.

Read top to bottom: `fit` runs epochs; `_train_epoch` runs steps; `training_step` is forward + losses +
weighting.backward; `optimizer_step` clips and steps. Nothing in the step reads a value back to the host:
losses are summed on the device and looked at every `log_every_n_steps` steps and at the end of an epoch.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mtlrun import __version__
from mtlrun.data.loading import eval_loader, to_device, train_loader
from mtlrun.data.modality import drop_modalities
from mtlrun import distributed
from mtlrun.engine import checkpoint
from mtlrun.engine.device import AMP_DTYPES, autocast, resolve_device
from mtlrun.engine.evaluate import count_batches, evaluate_split
from mtlrun.engine.records import write_metrics_csv
from mtlrun.errors import NonFiniteLossError, UsageError

log = logging.getLogger("mtlrun")

class TrainingInterrupted(Exception):
    """A stop asked for by SIGINT/SIGTERM. `path`: the checkpoint saved on the way out, or None when a
    second signal stopped the run before it could save (`last_good`: the newest checkpoint on disk)."""

    def __init__(self, signum: int, path: Path | None, last_good: Path | None = None):
        self.signum, self.path, self.last_good = signum, path, last_good
        super().__init__(signal.Signals(signum).name)


class Trainer:
    def __init__(self, *, model: nn.Module, tasks: dict, weighting, optimizer, scheduler_factory, data,
                 cfg, seed: int, run_dir: str | Path, config: dict, dist=None):
        self.cfg = cfg
        self.dist = dist or distributed.dist_info()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.tasks = tasks
        self.task_names = list(tasks)
        self.data = data
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config = config

        self.model = model.to(self.device)  # the plain module: checkpoints and evaluation use it
        self.weighting = weighting.to(self.device)  # set up by build_components, before the optimizer
        self._zero = torch.zeros(1, device=self.device)
        self.optimizer = optimizer
        self.train_model = self._wrap(self.model)  # what the training step calls (DDP and/or compiled)

        self.precision = str(cfg.precision)
        self.amp_dtype = AMP_DTYPES[self.precision]
        self.scaler = None
        if self.amp_dtype is torch.float16:  # bf16 has fp32's range and needs no loss scaling
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.accumulate = int(cfg.accumulate)

        self.train_set = data.dataset("train")
        self.modality_dropout = float(getattr(data, "modality_dropout", 0.0))
        if self.modality_dropout and len(data.spec.modalities) < 2:
            log.warning(f"data.modality_dropout={self.modality_dropout} has no effect: the model reads one "
                        f"modality ({', '.join(data.spec.modalities)}), and a sample never loses all of them")
        n_batches = count_batches(cfg.limit_train_batches, self._train_batches_available())
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
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0
        self._reset_train_sums()
        self._stop_signal: int | None = None
        self._saving = False  # a checkpoint is being written: a second signal waits for it

    # ----------------------------------------------------------------------------------------- set-up
    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.dist.enabled:
            if self.cfg.get("sync_batchnorm", False):
                wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
            ids = [self.device.index] if self.device.type == "cuda" else None
            probe = next(iter(eval_loader(self.data.dataset("train"), batch_size=2)))
            unused = unused_parameters(model, to_device(probe, self.device), self.device)
            if unused:  # DDP must then not wait for their gradients (it would fail the second step)
                log.info(f"{len(unused)} parameter(s) take no part in the predictions (e.g. {unused[0]}): "
                         f"DDP runs with find_unused_parameters")
            wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=bool(unused))
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _train_batches_available(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.dist.world_size)
        bs = self.data.batch_size
        return per_rank // bs if self.data.drop_last and per_rank >= bs else math.ceil(per_rank / bs)

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
        if self.modality_dropout:
            batch = drop_modalities(batch, self.modality_dropout)
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
        if self.cfg.skip_nonfinite and not self._all_finite(stacked):
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

    def _grads_finite(self) -> bool:
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        return self._all_finite(torch.stack([torch.isfinite(g).all() for g in grads]))

    def _all_finite(self, stacked: torch.Tensor) -> bool:
        finite = torch.isfinite(stacked).all().to(torch.int32)
        if self.dist.enabled:  # every rank must take the same decision or DDP's all-reduce hangs
            distributed.all_reduce_(
                [finite], op=torch.distributed.ReduceOp.MIN)
        return bool(finite)

    def _average_gradients(self, include_model: bool) -> None:
        """DDP: average over ranks the gradients DDP does not reduce: the weighting's own parameters
        (e.g. UW's log-variances, which live outside the DDP-wrapped model) and, for multi-backward
        weightings, the model's. A missing gradient counts as zero, so every rank reduces the same list."""
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        if include_model:
            params += [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        distributed.all_reduce_([flat])
        flat /= self.dist.world_size
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    def optimizer_step(self) -> None:
        params = self.optimizer.param_groups
        if self.cfg.skip_nonfinite and not self.scaler and not self._grads_finite():
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
        previous = self._install_signal_handlers()
        stopping = False
        try:
            for epoch in range(self.epoch, int(self.cfg.max_epochs)):
                self.epoch = epoch
                self._train_epoch(epoch)
                if self._should_stop(at_log_step=True):
                    stopping = True
                    raise TrainingInterrupted(self._stop_signal, self._save_last())
                train_row = self._train_row(epoch)
                val = self.evaluate("val")
                self._end_epoch(epoch, train_row, val)
                if self._early_stop():
                    log.info(f"early stopping: no improvement of {self.monitor_key} for "
                             f"{self.epochs_since_best} epochs")
                    break
        except TrainingInterrupted:
            stopping = True
            raise
        finally:
            for sig, handler in previous.items():
                # on the way out after a stop signal, further signals are ignored: the process is about to exit
                # with 128 + signal, and a late one must not turn that into a traceback
                signal.signal(sig, signal.SIG_IGN if stopping else handler)
        log.info(f"training took {time.perf_counter() - start:.1f}s; best epoch {self.best_epoch}")
        return {"best_epoch": self.best_epoch, "best_value": self.best_value}

    def _train_epoch(self, epoch: int) -> None:
        skip, self.batches_done = self.batches_done, self.batches_done  # > 0 only right after a resume
        loader = train_loader(self.train_set, batch_size=self.data.batch_size, seed=self.seed, epoch=epoch,
                              rank=self.dist.rank, world_size=self.dist.world_size,
                              drop_last=self.data.drop_last, skip_batches=skip,
                              num_workers=self.data.num_workers, pin_memory=self._pin_memory())
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
            # outside DDP's reducer, which allows one backward per forward; its gradients are averaged below.
            manual = self.dist.enabled and getattr(self.weighting, "multi_backward", False)
            sync = nullcontext() if (boundary and not manual) or not self.dist.enabled else self.train_model.no_sync()
            with sync:
                self.training_step(batch)
            self.batches_done += 1
            bar.update(1)
            if boundary:
                if self.dist.enabled:
                    self._average_gradients(include_model=manual)
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

    def _pin_memory(self) -> bool:
        pin = self.data.pin_memory
        return self.device.type == "cuda" if pin is None else bool(pin)

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
        first = self.first_nonfinite.clone()
        if self.dist.enabled:  # the earliest bad step on any rank; -1 (none) must not win the MIN
            first = torch.where(first < 0, torch.iinfo(torch.long).max, first)
            distributed.all_reduce_([first], op=torch.distributed.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.long).max, -1, first)
        bad = [(int(s), t) for s, t in zip(first.tolist(), self.task_names) if s >= 0]
        if bad:
            step, task = min(bad)
            raise NonFiniteLossError(
                f"non-finite loss for task '{task}' at step {step} (epoch {self.epoch + 1}); the last good "
                f"checkpoint is kept. Try a lower optim.lr, trainer.grad_clip=1.0, or "
                f"trainer.skip_nonfinite=true to skip such steps")

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate_split(self.model, self.tasks, self.data.dataset(split), device=self.device,
                              batch_size=self.data.eval_batch_size, precision=self.precision,
                              limit_batches=self.cfg.limit_eval_batches, num_workers=self.data.num_workers,
                              pin_memory=self._pin_memory(), dist=self.dist)

    # ------------------------------------------------------------------- monitor, history, checkpoints
    @property
    def monitor_key(self) -> str:
        key = str(self.cfg.monitor)
        return "monitor" if key == "auto" else key.removeprefix("val/")

    def monitor_value(self, val: dict[str, float]) -> float:
        """Higher is better. `auto`: mean over main tasks of each task's first metric (signed)."""
        if self.monitor_key == "monitor":
            main = [t for t in self.task_names if not self.tasks[t].auxiliary] or self.task_names
            values = []
            for t in main:
                metric = self.tasks[t].metric_names[0]
                sign = 1.0 if self.tasks[t].higher_is_better[metric] else -1.0
                values.append(sign * val[f"{t}/{metric}"])
            return sum(values) / len(values)
        task, _, metric = self.monitor_key.partition("/")
        higher = metric != "loss" and self.tasks[task].higher_is_better[metric]
        mode = str(self.cfg.get("monitor_mode", "auto"))
        if mode != "auto":
            higher = mode == "max"
        return val[self.monitor_key] if higher else -val[self.monitor_key]

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
        value = self.monitor_value(val)
        improved = self.best_value is None or value > self.best_value + float(self.cfg.early_stopping.min_delta)
        if improved:
            self.best_value, self.best_epoch, self.epochs_since_best = value, epoch + 1, 0
        else:
            self.epochs_since_best += 1
        val_row = {"epoch": epoch + 1, "split": "val", "step": self.global_step, **val, "monitor": value}
        self.history += [train_row, val_row]
        self.epoch, self.batches_done = epoch + 1, 0
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items() if not k.endswith("/loss"))
        log.info(f"epoch {epoch + 1}/{self.cfg.max_epochs}  train loss {train_row['objective']:.4f}  "
                 f"val {shown}  monitor {value:.4f}{'  (best)' if improved else ''}")
        self._save_last(best=improved)

    def _early_stop(self) -> bool:
        patience = self.cfg.early_stopping.patience
        return patience is not None and self.epochs_since_best >= int(patience)

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
            "skipped_steps": self.skipped_steps,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
            "epochs_since_best": self.epochs_since_best, "history": self.history,
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
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.epochs_since_best = state["epochs_since_best"]
        self.history = list(state["history"])

    def _nonfinite_weights(self) -> list[str]:
        """Names of model/weighting tensors holding NaN or inf: one host sync per checkpoint. DDP keeps the
        weights identical on every rank, so every rank reaches the same answer without communicating."""
        named = [(n, t) for module in (self.model, self.weighting)
                 for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
        if not named:
            return []
        finite = torch.stack([torch.isfinite(t).all() for _, t in named])
        if bool(finite.all()):
            return []
        return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]

    def _save_last(self, best: bool = False) -> Path:
        """last.pt, then best.pt when this epoch is the best. last.pt records the best epoch, so if the run
        dies between the two writes, resume sees that last.pt is itself the best and restores best.pt from
        it (train._restore_best). No checkpoint ever holds non-finite weights."""
        bad = self._nonfinite_weights()
        if bad:
            last = self._last_good()
            kept = f"{last} is the last good checkpoint" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"the weights are no longer finite after {self.global_step} step(s) (e.g. {', '.join(bad[:3])}); "
                f"nothing was saved, {kept}. Try a lower optim.lr or trainer.grad_clip=1.0")
        state = self.state_dict()  # collective under DDP (RNG states): every rank builds it
        path = self.ckpt_dir / "last.pt"
        if self.dist.is_main:
            self._saving = True
            try:
                checkpoint.save(path, state)
                if best:
                    checkpoint.save(self.ckpt_dir / "best.pt", state)
                write_metrics_csv(self.run_dir / "metrics.csv", self.history)
            finally:
                self._saving = False
        distributed.barrier()
        return path

    def _last_good(self) -> Path | None:
        path = self.ckpt_dir / "last.pt"
        return path if path.is_file() else None

    # --------------------------------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> dict:
        previous = {}

        def request_stop(signum, frame):
            if self._stop_signal is not None:  # a second signal: stop now, but never in the middle of a save
                if self._saving:
                    log.warning(f"{signal.Signals(signum).name} received again: stopping once the checkpoint "
                                f"being written is complete")
                    return
                raise TrainingInterrupted(self._stop_signal, None, self._last_good())
            self._stop_signal = signum
            if self.dist.is_main:
                log.warning(f"{signal.Signals(signum).name} received: saving a checkpoint after this step")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. called from a test thread): no handlers
                pass
        return previous

    def _should_stop(self, at_log_step: bool) -> bool:
        if not self.dist.enabled:
            return self._stop_signal is not None
        if not at_log_step:  # ranks agree on stopping only at log steps, with one tiny all-reduce
            return False
        flag = torch.tensor([0 if self._stop_signal is None else self._stop_signal], device=self.device)
        distributed.all_reduce_([flag], op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            self._stop_signal = int(flag.item())
        return self._stop_signal is not None


def unused_parameters(model: nn.Module, batch: dict, device: torch.device) -> list[str]:
    """Names of the trainable parameters no prediction depends on, e.g. an encoder's token-only parameters
    under a fusion that reads vectors, or its vector head under `fusion=early`, which reads tokens.

    One forward of `batch` in eval mode and one autograd.grad; the RNG state is restored, so a run is the
    same with or without this probe. Which parameters take part depends on the config, not the batch.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            preds = model(batch["inputs"], modality_mask=batch.get("modality_mask"))
            total = sum(p.float().sum() for p in preds.values())
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
        finally:
            model.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]
