"""DDP around the training step: wrapping the model (SyncBatchNorm, DistributedDataParallel, torch.compile)
and averaging the gradients DDP's reducer does not see."""

from __future__ import annotations

import logging

import torch
from torch import nn

from mtlrun import distributed
from mtlrun.data.loading import to_device
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")


def sync_batchnorm_problem(device: torch.device, distributed: bool) -> str | None:
    """torch's SyncBatchNorm all-reduces its statistics on CUDA only (on the CPU, DDP's set-up fails with
    'SyncBatchNorm layers only work with GPU modules'). A single process has nothing to synchronise: the
    setting does nothing there."""
    if distributed and device.type != "cuda":
        return (f"trainer.sync_batchnorm=true: torch synchronises BatchNorm statistics across ranks on CUDA "
                f"devices only, and this run's device is {device.type}; use trainer.sync_batchnorm=false (each "
                f"rank then normalises with the statistics of its own share of the batch) or run on CUDA")
    return None


def wrap_for_training(model: nn.Module, *, data, device: torch.device, distributed: bool, sync_batchnorm: bool,
                      compile: bool, reducer: bool = True) -> nn.Module:
    """What the training step calls; the plain `model` stays what checkpoints and evaluation use.

    `reducer=False` (a weighting that differentiates several times per step and averages its gradients
    itself): no DistributedDataParallel, whose output hooks (find_unused_parameters) would also cut the
    shared representation the weighting differentiates against off the heads' graph."""
    wrapped = model
    if distributed:
        problem = sync_batchnorm and sync_batchnorm_problem(device, distributed)
        if problem:  # validation says so before anything is built; this is for a Trainer built by hand
            raise UsageError(problem)
        if sync_batchnorm:
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        if not reducer:
            return torch.compile(wrapped) if compile else wrapped
        ids = [device.index] if device.type == "cuda" else None
        probe = next(iter(data.eval_loader("train", device=device, batch_size=2)))
        unused = unused_parameters(model, to_device(probe, device), device)
        if unused:  # DDP must then not wait for their gradients (it would fail the second step)
            log.info(f"{len(unused)} parameter(s) take no part in the predictions (e.g. {unused[0]}): "
                     f"DDP runs with find_unused_parameters")
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=bool(unused))
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


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


def average_gradients(params) -> None:
    """Average over ranks the gradients DDP does not reduce: the weighting's own parameters (e.g. UW's
    log-variances, which live outside the DDP-wrapped model) and, for multi-backward weightings, the model's.
    A missing gradient counts as zero, so every rank reduces the same tensors."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    distributed.reduce_over_ranks_([p.grad for p in params], "mean")


def average_buffers(model: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over ranks. A model trained without the DDP
    wrapper (multi-backward weightings) keeps its own statistics on every rank, where DDP would broadcast
    rank 0's before each forward: averaged before evaluation, every rank evaluates, and rank 0 saves, the same."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    averaged = distributed.reduce_over_ranks_([b.float() for b in buffers], "mean")  # in float32, whatever their dtype
    for b, v in zip(buffers, averaged):
        b.copy_(v)
