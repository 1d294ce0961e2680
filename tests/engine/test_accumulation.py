"""Batch semantics: `trainer.accumulate=2` with batch 32 is the optimizer step of batch 64, for the weightings
whose weights depend on the batch too (the aggregator sees the whole window), and what cannot is refused at
config time; `trainer.sync_batchnorm` on a device where torch cannot synchronise is refused at config time."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch
from torch import nn

from contracts import REPO, SGD_64, compose_config, run_process, step_without_batchnorm
from mtlrun.build import build_components
from mtlrun.config import config_groups
from mtlrun.engine.ddp import wrap_for_training
from mtlrun.errors import UsageError
from mtlrun.validation import training_problems
from mtlrun.weighting.base import accumulates_exactly, method_classes

pytestmark = [pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning")]

SOLVERS = {"upgrad": ("qpsolvers", "quadprog"), "nash_mtl": ("cvxpy", "ecos")}


def one_step(tmp_path, method: str, grad_on: str | None, batch_size: int, accumulate: int):
    """The parameters' update and the logged weights after one optimizer step over the 64 samples."""
    overrides = [*SGD_64, f"weighting={method}", f"data.batch_size={batch_size}", f"trainer.accumulate={accumulate}"]
    if grad_on:
        overrides.append(f"weighting.grad_on={grad_on}")
    cfg = compose_config(overrides)
    assert not training_problems(cfg)
    update, weights, trainer = step_without_batchnorm(cfg, tmp_path / f"{batch_size}x{accumulate}")
    assert trainer.global_step == 1 and trainer.train_sums.count == accumulate
    return update, weights


@pytest.mark.parametrize("method, grad_on", [("static", None), ("uw", None), ("rlw", None), ("imtl_l", None),
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
    overrides = [*SGD_64, f"weighting={method}", "trainer.accumulate=2"]
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
    assert not training_problems(compose_config([*SGD_64, f"weighting={method}", "trainer.accumulate=4"]))


def test_the_methods_offered_instead_are_read_from_their_classes():
    """The refusal's list of what accumulates exactly is derived, not kept by hand: every configs/weighting/
    method whose class accepts accumulation at some grad_on is in it, and only those."""
    offered = accumulates_exactly()
    classes = {cls.method_name(): cls for cls in method_classes()}
    assert set(classes) == set(config_groups()["weighting"])
    for name, cls in classes.items():
        accepted = [g for g in (cls.grad_on_levels or (None,)) if cls.accumulation_problem(g) is None]
        assert (re.search(rf"\b{name}\b", offered) is not None) == bool(accepted), (name, offered)
    assert "graddrop (grad_on=parameters)" in offered and "upgrad" in offered and "famo" not in offered


def test_rlw_draws_once_per_optimizer_step(tmp_path):
    cfg = compose_config([*SGD_64, "weighting=rlw"])
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
    cfg = compose_config([*SGD_64, "trainer.sync_batchnorm=true"])
    assert not training_problems(cfg)  # one process: nothing to synchronise, the setting does nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    problems = training_problems(cfg)
    assert len(problems) == 1, problems
    assert problems[0].startswith("trainer.sync_batchnorm=true: ")
    assert "CUDA" in problems[0] and "cpu" in problems[0] and "trainer.sync_batchnorm=false" in problems[0]
    assert not training_problems(compose_config([*SGD_64, "trainer.sync_batchnorm=false"]))
    # a Trainer built without the validation (by hand) gets the same message, before DDP is set up
    with pytest.raises(UsageError, match="trainer.sync_batchnorm=true: torch synchronises"):
        wrap_for_training(nn.Linear(2, 2), data=None, device=torch.device("cpu"), distributed=True,
                          sync_batchnorm=True, compile=False)


DDP_WORKER = """
import os, sys, torch
import hydra_memo
from contracts import SGD_64, compose_config, step_without_batchnorm
from mtlrun import distributed

hydra_memo.install()  # composes as the test process does (tests/cli/test_configs.py checks it against Hydra's)

info = distributed.init_if_launched()
torch.set_num_threads(1)
for method in sys.argv[1:]:
    name, _, grad_on = method.partition(":")
    cfg = compose_config([*SGD_64, f"weighting={name}", *([f"weighting.grad_on={grad_on}"] if grad_on else []),
                          "data.batch_size=16", "trainer.accumulate=2"])
    update, weights, trainer = step_without_batchnorm(cfg, f"run-{method}", dist=info)
    assert trainer.global_step == 1 and trainer.train_sums.count == 2
    if info.rank == 0:
        torch.save({"update": update, "weights": weights}, f"{method}.pt")
distributed.barrier()
distributed.destroy()
os._exit(0)  # as tests/weighting's DDP worker: the interpreter's teardown sometimes aborts after the work
"""
DDP_EQUAL = ["static", "uw", "rlw", "upgrad:representation", "mgda:representation"]


@pytest.mark.e2e
def test_two_ranks_accumulating_are_one_process_on_the_global_batch(tmp_path):
    """2 gloo ranks x 2 micro-batches x 16 samples make the step of one process on the 64 samples, for the
    methods docs/concepts/weighting.md's "Batch semantics" says so of (gradient level: at grad_on=representation)."""
    for package in SOLVERS["upgrad"]:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"weighting=upgrad needs {package}")
    # tests/ on its path for contracts (a PYTHONPATH would make the ranks exec'd processes: tests/zygote.py)
    (tmp_path / "worker.py").write_text(f"import sys; sys.path.insert(1, {str(REPO / 'tests')!r})\n" + DDP_WORKER)
    proc = run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "worker.py", *DDP_EQUAL], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in DDP_EQUAL:
        name, _, grad_on = method.partition(":")
        whole, whole_weights = one_step(tmp_path, name, grad_on or None, batch_size=64, accumulate=1)
        ddp = torch.load(tmp_path / f"{method}.pt")
        relative = float((ddp["update"] - whole).norm() / whole.norm())
        assert relative < 1e-5, (method, relative)
        torch.testing.assert_close(ddp["weights"], whole_weights, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grad_on", ["parameters", "representation"])
def test_a_window_whose_last_micro_batch_was_skipped_is_aggregated_at_its_end(grad_on):
    """skip_nonfinite can skip the micro-batch that closes a window: `end_window` then aggregates what the
    earlier ones gathered, as if the last trained micro-batch had closed it."""
    cfg = compose_config([*SGD_64, "weighting=upgrad", f"weighting.grad_on={grad_on}", "data.batch_size=32"])
    parts = build_components(cfg)
    model, weighting = parts.model, parts.weighting
    model.eval()  # BatchNorm with fixed statistics: the two passes below see the same function
    batch = next(iter(parts.data.train_loader(epoch=0, seed=0, device=torch.device("cpu"), rank=0, world_size=1)))

    def grads(first, last, close):
        model.zero_grad(set_to_none=True)
        weighting.start_micro_batch(first=first, last=last)
        preds, shared = model(batch["inputs"], return_shared=True)
        losses = {t: parts.tasks[t].loss(preds[t], batch["targets"][t], None) for t in parts.tasks}
        weighting.backward(losses, scale=lambda x: x / 2, shared=shared)
        if close:
            weighting.end_window()
        named = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return named, weighting.current_weights().clone()

    shared = {n for n, p in model.named_parameters() if any(p is q for q in model.shared_parameters())}
    alone, alone_weights = grads(first=True, last=True, close=False)
    assert shared and shared <= set(alone)
    opened, _ = grads(first=True, last=False, close=False)
    assert not shared & set(opened)  # the shared parameters' gradient waits for the window's end
    weighting.end_window()  # (closes that window)
    skipped, skipped_weights = grads(first=True, last=False, close=True)
    assert set(skipped) == set(alone)
    for name, grad in alone.items():
        torch.testing.assert_close(skipped[name], grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(skipped_weights, alone_weights)
