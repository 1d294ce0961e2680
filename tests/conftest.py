"""Shared helpers for the end-to-end tests: run the real CLI in a subprocess on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from mtlrun.config import config_dir


def pytest_addoption(parser):
    parser.addoption("--exhaustive", action="store_true", default=False,
                     help="also run the tests marked `exhaustive` (full combination grids; the default run "
                          "covers them pairwise)")


def pytest_configure(config):
    config.addinivalue_line("markers", "exhaustive: part of a full combination grid; skipped unless pytest "
                                       "--exhaustive")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--exhaustive"):
        return
    skip = pytest.mark.skip(reason="full combination grid: run with --exhaustive")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)


# A few seconds per run: tiny multidigits, one epoch, no progress bar.
TINY = ["experiment=smoke", "data.n_train=256", "data.n_val=128", "data.n_test=160", "data.batch_size=32",
        "trainer.device=cpu"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mtlrun ARGS` (or `launcher ARGS`); stdout and stderr are captured separately."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None) if not (env and "HYDRA_FULL_ERROR" in env) else None
    cmd = [*(launcher or [sys.executable, "-m", "mtlrun"]), *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_results(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny training run shared by the tests that only read its outputs."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    proc = run_cli("train", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def compose_config(overrides=(), config_name: str = "train") -> DictConfig:
    """The real config as `mtlrun train <overrides>` would compose it (minus the hydra node), in-process."""
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # In-process tests run tiny convolutions, dominated by thread start-up on a small shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
