"""The helpers tests share, in one module: running the real CLI on tiny data, reading a run's results, composing
the real config in-process, and the model contract every sharing architecture must keep.

Fixtures and pytest hooks live in tests/conftest.py; everything a test imports by name lives here (`from
contracts import ...`: pyproject's `pythonpath = ["tests"]` puts this folder on sys.path wherever the test
file is). No test module imports another test module (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from mtlrun.build import build_components, build_trainer, seed_everything
from mtlrun.config import config_dir

import cli_in_process
import zygote

REPO = Path(__file__).resolve().parents[1]


def requires(package: str, extra: str):
    """A skip mark for the tests of an optional extra when `package` is missing. Unlike a module-level
    pytest.importorskip, it does not import the package while collecting: torchmetrics takes seconds to import,
    which every xdist worker would pay for tests that run on one of them."""
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"needs {package}: pip install -e '.[{extra}]'")

# A few seconds per run: tiny multidigits, one epoch, no progress bar.
TINY = ["experiment=smoke", "data.n_train=256", "data.n_val=128", "data.n_test=160", "data.batch_size=32",
        "trainer.device=cpu"]
# TINY at a constant learning rate, whose schedule does not depend on max_epochs: resuming a run for more epochs
# reproduces a longer run exactly. The session's trained_run (tests/conftest.py) is this run for 2 epochs.
EXACT = [*TINY, "scheduler=constant", "optim.lr=0.003"]
TRAINED_RUN = [*EXACT, "trainer.max_epochs=2"]
# 64 training samples, one epoch, plain SGD (its update is the gradient itself; Adam's first step is
# lr * sign(g), which would hide a wrong gradient): with data.batch_size=64 one optimizer step, the step that
# 2 x 32 accumulated, or 2 ranks x 2 x 16, must equal (step_without_batchnorm)
SGD_64 = ["experiment=smoke", "data.n_train=64", "data.n_val=8", "data.n_test=8", "trainer.device=cpu",
          "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "optim=sgd", "optim.momentum=0",
          "optim.nesterov=false", "optim.weight_decay=0", "scheduler=constant", "trainer.max_epochs=1",
          "trainer.progress_bar=false"]


# --------------------------------------------------------------------------------------- the real CLI
# Whether the test being run is marked `e2e` (conftest sets it before the test's fixtures): run_cli and
# start_cli refuse otherwise, so that `pytest -m "not e2e"` never waits on a CLI run. True outside pytest.
running_e2e_test = True


def cli_env(env: dict | None = None) -> dict:
    """The environment of a CLI process: this one's, unbuffered, HYDRA_FULL_ERROR only where the test sets it,
    and one intra-op thread (OMP_NUM_THREADS=1, which mtlrun's auto thread policy follows) unless the test
    sets another: the tests' processes run side by side on a small CPU."""
    if not running_e2e_test:
        raise AssertionError("this runs the CLI: mark the test (or its module) @pytest.mark.e2e")
    # not the SLURM task variables of a job running the suite: mtlrun would take every CLI process for a rank
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env = {**base, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if not (env and "HYDRA_FULL_ERROR" in env):
        full_env.pop("HYDRA_FULL_ERROR", None)
    return full_env


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300,
            launcher: list[str] | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m mtlrun ARGS` (or `launcher ARGS`); stdout and stderr are captured separately. In this
    process (tests/cli_in_process.py: as a fresh process would, without its seconds of imports) unless a
    launcher is given, the test needs a real process (`process=True`: what it checks is the process's own), or
    MTLRUN_TEST_SUBPROCESS=1; `timeout` bounds a real process only."""
    full_env = cli_env(env)
    if launcher is None and not process and cli_in_process.wanted(full_env):
        return cli_in_process.run_in_process(list(args), cwd, full_env)
    return run_process([*(launcher or [sys.executable, "-m", "mtlrun"]), *args], cwd=cwd, env=full_env,
                       timeout=timeout)


def run_process(cmd: list, *, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in cli_env's environment (or `env`), through `popen`:
    a torchrun launch or a Python script is forked by the zygote."""
    with popen(cmd, cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def popen(cmd: list, *, cwd: Path, env: dict, **kwargs) -> subprocess.Popen:
    """The process `cmd` (text mode). A command line of this Python (`-m mtlrun`, `-m torch.distributed.run`,
    `-c CODE`) is forked by this worker's zygote (tests/zygote.py: without its seconds of imports) where its
    environment allows; anything else is started with exec."""
    cmd, env = zygote.through_relay(cmd, env)  # torchrun's ranks too
    if set(kwargs) <= zygote.POPEN_OPTIONS and zygote.zygote(env, cmd) is not None:
        return zygote.ZygotePopen(cmd, cwd=cwd, env=env, text=True, **kwargs)
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **kwargs)


def run_script(script: Path, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` (a benchmark script) as run_cli runs the CLI: in this process unless
    MTLRUN_TEST_SUBPROCESS=1; cwd defaults to the repository."""
    full_env, cwd = cli_env(), Path(cwd or REPO)
    if cli_in_process.wanted(full_env):
        return cli_in_process.run_script_in_process(script, list(args), cwd, full_env)
    return run_process([sys.executable, str(script), *args], cwd=cwd, env=full_env, timeout=timeout)


def start_cli(*args: str, cwd: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start `python -m mtlrun ARGS` without waiting (to signal or race it), in run_cli's environment."""
    return popen([sys.executable, "-m", "mtlrun", *args], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                 stderr=stderr)


def free_port(low: int = 15000, high: int = 35000) -> int:
    """A TCP port in [low, high) that nothing listens on now (for a rendezvous on 127.0.0.1)."""
    import random
    import socket

    for port in random.Random(os.getpid()).sample(range(low, high), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def start_slurm_tasks(*args: str, cwd: Path, ntasks: int = 2) -> list[subprocess.Popen]:
    """`srun --ntasks=N mtlrun ARGS` on this machine: N CLI processes with the variables srun gives its tasks
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, SLURM_JOB_ID), no torchrun. The job id is
    picked so that the port mtlrun derives from it (15000 + id % 20000) is free."""
    port = free_port()
    base = {k: v for k, v in cli_env().items() if not k.startswith(("SLURM_", "MASTER_")) and
            k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    procs = []
    for rank in range(ntasks):
        env = {**base, "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(rank),
               "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": str(port - 15000),
               "SLURM_TASKS_PER_NODE": f"{ntasks}(x1)"}
        procs.append(popen([sys.executable, "-m", "mtlrun", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE))
    return procs


def read_results(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file (predictions.csv, a manifest) as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def step_without_batchnorm(cfg, run_dir, dist=None):
    """One optimizer step over the config's whole epoch (`Trainer.step` of every batch of the loader: one
    accumulation window) with the BatchNorm layers removed: BatchNorm normalises with the statistics of the
    samples it sees, by design not the same for 2 x 32 and 64. Returns the parameters' update, the logged
    weights and the trainer."""
    seed_everything(cfg.seed)
    parts = build_components(cfg)
    for module in list(parts.model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
    trainer = build_trainer(cfg, run_dir, parts=parts, dist=dist)
    params = [*trainer.model.parameters(), *trainer.weighting.parameters()]
    before = [p.detach().clone() for p in params]
    trainer.step(trainer.data.train_loader(epoch=0, seed=trainer.seed, device=trainer.device, rank=trainer.dist.rank,
                                           world_size=trainer.dist.world_size))
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    sums = trainer.train_sums
    return update, sums.weights / max(1, sums.count), trainer


_composed: dict[tuple, DictConfig] = {}


def compose_config(overrides=(), config_name: str = "train") -> DictConfig:
    """The real config as `mtlrun train <overrides>` would compose it (minus the hydra node), in-process.

    Composed once per worker for each (config, overrides): the shipped configs do not change during a session,
    and tests ask for the same ones again and again (every weighting in several tests). Each call gets its own
    deep copy, so a test that edits its config changes no other test's."""
    key = (config_name, tuple(overrides))
    if key not in _composed:
        OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            _composed[key] = compose(config_name, overrides=list(overrides))
    return copy.deepcopy(_composed[key])


# ------------------------------------------------------------------------------------ the model contract
# Checks that take (model, tasks, batch): tests/models/ runs them on every sharing architecture, on the
# image backbones and on the dense ones.
def as_list(shared):
    return [shared] if isinstance(shared, torch.Tensor) else list(shared)


def losses_of(preds, tasks, batch):
    return {t: tasks[t].loss(preds[t], batch["targets"][t], None) for t in tasks}


def zeros_for_none(grads, like):
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def check_parameter_partition(model, tasks, batch=None):
    """Shared and per-task parameters partition all parameters; soft sharing shares none."""
    all_ids = [id(p) for p in model.parameters()]
    shared = [id(p) for p in model.shared_parameters()]
    per_task = {t: [id(p) for p in model.task_parameters(t)] for t in tasks}
    assert all(per_task.values())
    flat = shared + [i for ids in per_task.values() for i in ids]
    assert len(flat) == len(set(flat)), "shared and task parameters overlap"
    assert sorted(flat) == sorted(all_ids)
    assert bool(shared) == type(model).has_shared_representation  # soft sharing shares no parameter


def check_gradient_factorizes(model, tasks, batch):
    """A task's gradient on the shared parameters is its gradient on `shared`, backpropagated through `shared`
    (what the representation-level gradient methods rely on); a task's loss reaches its own parameters and
    no other task's."""
    model.train()
    preds, shared = model(batch["inputs"], return_shared=True)
    losses = losses_of(preds, tasks, batch)
    shared_params = list(model.shared_parameters())
    for t, loss in losses.items():
        own = list(model.task_parameters(t))
        others = [p for o in tasks if o != t for p in model.task_parameters(o)]
        grads = torch.autograd.grad(loss, shared_params + own + others, retain_graph=True, allow_unused=True)
        direct, own_grads, other_grads = (grads[:len(shared_params)], grads[len(shared_params):-len(others)],
                                          grads[-len(others):])
        assert all(g is not None for g in own_grads), f"some of task {t}'s parameters do not reach its loss"
        assert all(g is None or not g.any() for g in other_grads), f"task {t}'s loss reaches another task"
        if shared is None:
            assert not shared_params
            continue
        # every shared parameter is used by every task (else it would be a task parameter)
        assert all(g is not None for g in direct), f"a shared parameter does not reach task {t}"
        pieces = as_list(shared)
        d_shared = zeros_for_none(torch.autograd.grad(loss, pieces, retain_graph=True, allow_unused=True), pieces)
        through = torch.autograd.grad(pieces, shared_params, grad_outputs=d_shared, retain_graph=True,
                                      allow_unused=True)
        for p, a, b in zip(shared_params, direct, zeros_for_none(through, shared_params)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert any(g.abs().sum() > 0 for g in direct)


# ------------------------------------------------------------------------------------ host syncs
class NoHostSync(torch.overrides.TorchFunctionMode):
    """Fails on the calls that make a GPU wait for the host: reading a value (.item, .tolist, bool), a
    data-dependent shape (nonzero, boolean indexing, masked_select) or a copy to the CPU."""

    SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.nonzero, torch.nonzero,
               torch.Tensor.cpu, torch.Tensor.numpy, torch.masked_select, torch.Tensor.masked_select}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCING:
            raise AssertionError(f"host sync in the training step: {func.__name__}")
        if func is torch.Tensor.__getitem__ and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                   for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            raise AssertionError("host sync in the training step: boolean indexing")
        return func(*args, **(kwargs or {}))
