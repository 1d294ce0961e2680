"""Fixtures and hooks shared by every test; the helpers a test imports by name are in tests/contracts.py."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import torch

import contracts
import curves_unrasterised
import hydra_memo
from contracts import TINY, TRAINED_RUN, run_cli

hydra_memo.install()  # in-process CLI runs compose their config once, not twice (the module says why)
curves_unrasterised.install()  # in-process train runs build curves.png's figure; only trained_run's is a PNG


def pytest_addoption(parser):
    parser.addoption("--exhaustive", action="store_true", default=False,
                     help="also run the tests marked `exhaustive` (full combination grids; the default run "
                          "covers them pairwise)")


def pytest_configure(config):
    config.addinivalue_line("markers", "exhaustive: part of a full combination grid; skipped unless pytest "
                                       "--exhaustive")
    config.addinivalue_line("markers", "e2e: runs the mtlrun CLI (in this process or its own) or starts a "
                                       "process (torchrun, a benchmark script, a wheel build); `pytest -m \"not e2e\"` "
                                       "is the fast inner loop")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # before the test's fixtures, which may start the CLI for it (trained_run)
    contracts.running_e2e_test = item.get_closest_marker("e2e") is not None


def pytest_collection_modifyitems(config, items):
    # The modules that start processes run first: they are the long units of work under xdist's --dist
    # loadscope (pyproject.toml); then the other modules, the larger first (by number of tests), so that the
    # smallest fill the end and the workers finish together. A stable sort: within a module, the file's order.
    starts_processes = {item.path for item in items if item.get_closest_marker("e2e")}
    size = collections.Counter(item.path for item in items  # the tests that will run
                               if config.getoption("--exhaustive") or "exhaustive" not in item.keywords)
    items.sort(key=lambda item: (item.path not in starts_processes,
                                 0 if item.path in starts_processes else -size[item.path]))
    if config.getoption("--exhaustive"):
        return
    skip = pytest.mark.skip(reason="full combination grid: run with --exhaustive")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny training run shared by the tests that only read its outputs (copy it to change anything): two
    epochs of TINY at a constant learning rate, so that it is also the first half of the exact-resume test
    (tests/engine/test_resume.py). It writes where a run goes by default, outputs/train/<date>/<time> under the
    working directory, which tests/cli/test_cli.py checks."""
    def train(cwd: Path) -> Path:
        with curves_unrasterised.rasterised():  # its curves.png is read (tests/cli/test_cli.py)
            proc = run_cli("train", *TRAINED_RUN, cwd=cwd)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs = [p for p in (cwd / "outputs" / "train").glob("*/*") if p.is_dir()]
        assert len(runs) == 1 and (runs[0] / "results.json").is_file(), runs
        return runs[0]

    return once_per_session(tmp_path_factory, "trained", train)


@pytest.fixture(scope="session")
def seed_sweep(tmp_path_factory) -> Path:
    """`mtlrun train -m TINY seed=0,1`: two tiny multi-task runs in one sweep dir (jobs 0 and 1)."""
    def sweep(root: Path) -> Path:
        proc = run_cli("train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return root / "sweep"

    return once_per_session(tmp_path_factory, "seeds", sweep)


def once_per_session(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)`'s result (in a new temporary folder), made once for the whole test session: under xdist
    the first worker that needs it makes it while the others wait, then they all read it."""
    from filelock import FileLock  # torch's own dependency

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder of this session's workers' folders
    made = root / f"{name}.made"  # names what was made
    with FileLock(str(root / f"{name}.lock")):
        if not made.is_file():
            made.write_text(str(make(tmp_path_factory.mktemp(name))))
    return Path(made.read_text())


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # In-process tests run tiny convolutions, dominated by thread start-up on a small shared CPU. And inductor
    # compiles their kernels in this process: its default pool of compile workers, each a process that imports
    # torch, costs more than it saves for the few tiny models the suite compiles (on a cold cache, a compiled tiny
    # train run took 29.6 s of CPU with one compile thread against 39.8 s with this machine's default of 2, its
    # worker processes included; one run each).
    from torch._inductor import config as inductor

    threads, compile_threads = torch.get_num_threads(), inductor.compile_threads
    torch.set_num_threads(1)
    inductor.compile_threads = 1
    yield
    torch.set_num_threads(threads)
    inductor.compile_threads = compile_threads
