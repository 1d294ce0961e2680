"""Batch semantics: `trainer.accumulate=2` with batch 32 is the optimizer step of batch 64, for the weightings
whose weights depend on the batch too (the aggregator sees the whole window), and what cannot is refused at
config time; `trainer.sync_batchnorm` on a device where torch cannot synchronise is refused at config time."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from contracts import compose_config
from mtlrun.build import build_components, build_trainer, seed_everything
from mtlrun.engine.ddp import wrap_for_training
from mtlrun.errors import UsageError
from mtlrun.validation import training_problems

pytestmark = [pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning")]

# 64 samples, one optimizer step; plain SGD, so the update is the gradient itself (Adam's first step is
# lr * sign(g), which would hide a wrong gradient)
SMALL = ["experiment=smoke", "data.n_train=64", "data.n_val=8", "data.n_test=8", "trainer.device=cpu",
         "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "optim=sgd", "optim.momentum=0", "optim.nesterov=false",
         "optim.weight_decay=0", "scheduler=constant", "trainer.max_epochs=1"]
SOLVERS = {"upgrad": ("qpsolvers", "quadprog"), "nash_mtl": ("cvxpy", "ecos")}


def one_step(tmp_path, method: str, grad_on: str | None, batch_size: int, accumulate: int):
    """The parameters' update and the logged weights after one optimizer step over the 64 samples."""
    overrides = [*SMALL, f"weighting={method}", f"data.batch_size={batch_size}", f"trainer.accumulate={accumulate}"]
    if grad_on:
        overrides.append(f"weighting.grad_on={grad_on}")
    cfg = compose_config(overrides)
    assert not training_problems(cfg)
    seed_everything(cfg.seed)
    parts = build_components(cfg)
    # BatchNorm normalises with the statistics of the batch it sees: by design not the same for 2 x 32 and 64
    for module in list(parts.model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
    trainer = build_trainer(cfg, tmp_path / f"{batch_size}x{accumulate}", parts=parts)
    params = [*trainer.model.parameters(), *trainer.weighting.parameters()]
    before = [p.detach().clone() for p in params]
    trainer._train_epoch(0)
    assert trainer.global_step == 1 and trainer.train_count == accumulate
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    n = len(trainer.task_names)
    weights = trainer.train_sums[n:2 * n] / trainer.train_count
    return update, weights


@pytest.mark.parametrize("method, grad_on", [("static", None), ("uw", None),
                                             *[(m, g) for m in ("upgrad", "mgda", "nash_mtl")
                                               for g in ("parameters", "representation")]])
def test_accumulating_two_micro_batches_is_the_step_of_the_whole_batch(tmp_path, method, grad_on):
    for package in SOLVERS.get(method, ()):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"weighting={method} needs {package}")
    whole, whole_weights = one_step(tmp_path, method, grad_on, batch_size=64, accumulate=1)
    accumulated, accumulated_weights = one_step(tmp_path, method, grad_on, batch_size=32, accumulate=2)
    assert whole.abs().max() > 0
    relative = float((accumulated - whole).norm() / whole.norm())
    assert relative < 1e-5, relative
    torch.testing.assert_close(accumulated_weights, whole_weights, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, grad_on", [("gls", None), ("famo", None), ("gradnorm", "parameters"),
                                             ("gradnorm", "representation"), ("graddrop", "representation"),
                                             ("config", "representation")])
def test_accumulation_is_refused_where_it_would_not_be_the_larger_batch(method, grad_on):
    overrides = [*SMALL, f"weighting={method}", "trainer.accumulate=2"]
    if grad_on:
        overrides.append(f"weighting.grad_on={grad_on}")
    problems = training_problems(compose_config(overrides))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"trainer.accumulate=2: weighting={method} ")
    assert "trainer.accumulate=1" in problems[0] and "upgrad" in problems[0]  # what to do instead
    assert not training_problems(compose_config([*overrides[:-2 if grad_on else -1], "trainer.accumulate=1",
                                                 *([f"weighting.grad_on={grad_on}"] if grad_on else [])]))


@pytest.mark.parametrize("method", ["static", "uw", "dwa", "rlw", "imtl_l", "pcgrad", "cagrad", "gradvac",
                                    "graddrop", "config"])
def test_accumulation_is_accepted_where_it_is_the_larger_batch(method):
    assert not training_problems(compose_config([*SMALL, f"weighting={method}", "trainer.accumulate=4"]))


def test_rlw_draws_once_per_optimizer_step(tmp_path):
    cfg = compose_config([*SMALL, "weighting=rlw"])
    parts = build_components(cfg)
    weighting = parts.weighting
    losses = {t: torch.tensor(1.0 + i) for i, t in enumerate(weighting.task_names)}
    drawn = []
    for first, last in [(True, False), (False, True), (True, False), (False, True)]:
        weighting.start_micro_batch(first=first, last=last)
        weighting.backward({t: v.clone().requires_grad_() for t, v in losses.items()}, scale=lambda x: x)
        drawn.append(weighting.current_weights().clone())
    torch.testing.assert_close(drawn[0], drawn[1], rtol=0, atol=0)
    torch.testing.assert_close(drawn[2], drawn[3], rtol=0, atol=0)
    assert not torch.equal(drawn[0], drawn[2])


def test_sync_batchnorm_needs_cuda_under_ddp(monkeypatch):
    cfg = compose_config([*SMALL, "trainer.sync_batchnorm=true"])
    assert not training_problems(cfg)  # one process: nothing to synchronise, the setting does nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    problems = training_problems(cfg)
    assert len(problems) == 1, problems
    assert problems[0].startswith("trainer.sync_batchnorm=true: ")
    assert "CUDA" in problems[0] and "cpu" in problems[0] and "trainer.sync_batchnorm=false" in problems[0]
    assert not training_problems(compose_config([*SMALL, "trainer.sync_batchnorm=false"]))
    # a Trainer built without the validation (by hand) gets the same message, before DDP is set up
    with pytest.raises(UsageError, match="trainer.sync_batchnorm=true: torch synchronises"):
        wrap_for_training(nn.Linear(2, 2), data=None, device=torch.device("cpu"), distributed=True,
                          sync_batchnorm=True, compile=False)
