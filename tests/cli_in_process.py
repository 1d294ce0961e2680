"""`python -m mtlrun ARGS` run inside the test process, as a fresh process would run it (contracts.run_cli uses it).

A CLI process spends 3-6 s importing torch and Hydra before it does anything; in-process the imports are done
once per pytest worker, so a tiny CLI run costs what its work costs. What a process would isolate is set up
as a fresh process has it and put back afterwards, so the test sees the same exit code and the same stdout
and stderr lines, and the tests after it see the state they had:
- os.environ (cli_env's), the working directory, sys.argv, sys.path (the working directory first, as `-m`
  puts it; a script's folder for `run_script_in_process`) and the modules imported from outside the installed packages (a user's `my_net.py`);
- stdout and stderr: file descriptors 1 and 2 are redirected to two files (what C code writes too), and
  sys.stdout / sys.stderr write through to them unbuffered (PYTHONUNBUFFERED), each read back separately;
- logging: no handler on the root logger (Python's last-resort handler prints to stderr until Hydra
  configures logging); afterwards the loggers get back their levels and handlers and the run's are closed;
- warnings: a fresh process's filters, printed to stderr (pytest would record them instead);
- torch: default dtype, deterministic algorithms, grad mode, intra-op threads and the RNGs of torch, numpy
  and random (a fresh process's torch seed is torch's default seed);
- signal handlers, Hydra's singletons (GlobalHydra, HydraConfig, JobRuntime) and OmegaConf's resolvers;
- mtlrun's per-process state: run dir locks held until exit (engine/rundir._held), a sweep's job outcomes,
  messages logged once per process;
- SystemExit becomes the return code; an uncaught exception prints its traceback and returns 1.
`MTLRUN_TEST_SUBPROCESS=1` makes run_cli start real processes instead, to check that both agree.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import random
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TORCH_DEFAULT_SEED = 67280421310721  # a fresh process's torch.initial_seed()
# Variables that make mtlrun a rank of a distributed job: it then leaves with os._exit, which would end pytest
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_ADDR")


def wanted(env: dict) -> bool:
    """Whether run_cli may run the CLI in this process (else a real process: asked for, or a distributed rank)."""
    return os.environ.get("MTLRUN_TEST_SUBPROCESS") != "1" and not any(k in env for k in DISTRIBUTED_ENV)


def run_in_process(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run `python -m mtlrun ARGS` in cwd with exactly the environment `env`: a CompletedProcess like
    subprocess.run(..., capture_output=True, text=True) returns."""
    from mtlrun import cli

    argv = [str(REPO / "mtlrun" / "__main__.py"), *args]
    return _isolated_run(cli.main, argv, cwd, cwd, env, [sys.executable, "-m", "mtlrun", *args])


def run_script_in_process(script: Path, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` (a benchmark script) in cwd, isolated as `run_in_process` isolates the CLI;
    sys.path starts with the script's folder, as python puts it there."""
    script = Path(script).resolve()
    return _isolated_run(lambda: runpy.run_path(str(script), run_name="__main__"), [str(script), *args], cwd,
                         script.parent, env, [sys.executable, str(script), *args])


def _isolated_run(main, argv: list[str], cwd: Path, path0: Path, env: dict, cmd: list[str]):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with ExitStack() as stack:
            for isolated in (_environment(env), _working_directory(cwd, argv, path0), _streams(out, err),
                             _logging(), _warnings(), _torch_state(), _signal_handlers(), _hydra_state(),
                             _mtlrun_state()):
                stack.enter_context(isolated)
            code = _exit_code(main)
        return subprocess.CompletedProcess(cmd, code, _read(out), _read(err))


def _exit_code(main) -> int:
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return (exc.code or 0) % 256
        print(exc.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def _read(file) -> str:
    file.seek(0)
    return file.read().decode("utf-8", errors="replace").replace("\r\n", "\n")


@contextmanager
def _environment(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _working_directory(cwd: Path, argv: list[str], path0: Path):
    saved_cwd, saved_argv, saved_path = os.getcwd(), sys.argv, list(sys.path)
    modules = set(sys.modules)
    os.chdir(cwd)
    sys.argv = argv
    sys.path.insert(0, os.path.abspath(path0))
    importlib.invalidate_caches()  # files a test wrote since the last import
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for name in set(sys.modules) - modules:
            if _users_module(sys.modules.get(name)):
                del sys.modules[name]  # a later test's my_net.py, in its own folder, must import afresh


def _users_module(module) -> bool:
    """A module imported from outside the interpreter's packages and the repository: the user's code."""
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.realpath(path)
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, REPO)}
    return not any(path.startswith(root + os.sep) for root in installed)


@contextmanager
def _streams(out, err):
    """fds 1 and 2 into `out` and `err`; sys.stdout and sys.stderr write through to them, as with python -u
    into pipes (stdout strict utf-8, stderr backslashreplace)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(os.dup(1), "w"), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(2), "w"), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.close()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


@contextmanager
def _logging():
    manager = logging.Logger.manager
    loggers = {"": logging.getLogger(), **{n: g for n, g in manager.loggerDict.items()
                                           if isinstance(g, logging.Logger)}}
    saved = {n: (g.level, list(g.handlers), g.propagate, g.disabled) for n, g in loggers.items()}
    root = logging.getLogger()
    root.handlers, root.level = [], logging.WARNING  # a fresh process's root logger
    try:
        yield
    finally:
        after = {"": root, **{n: g for n, g in manager.loggerDict.items() if isinstance(g, logging.Logger)}}
        kept = {id(h) for _, handlers, _, _ in saved.values() for h in handlers}
        for name, logger in after.items():
            for handler in logger.handlers:
                if id(handler) not in kept:
                    handler.close()  # the run's log file and console handlers
            level, handlers, propagate, disabled = saved.get(name, (logging.NOTSET, [], True, False))
            logger.setLevel(level)
            logger.handlers, logger.propagate, logger.disabled = handlers, propagate, disabled


@contextmanager
def _warnings():
    with warnings.catch_warnings():
        warnings.resetwarnings()  # a new filters version: the "already shown" registries start empty
        warnings.filters[:] = _fresh_warning_filters()
        warnings.showwarning = _print_warning
        yield


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


_FRESH_FILTERS: list | None = None
_PROBE = """import json, re, warnings, torch, numpy, hydra, mtlrun.cli
def text(p):  # a filter's message or module: None, a plain string (matched exactly) or a regex
    return p if not isinstance(p, re.Pattern) else {"regex": p.pattern, "flags": p.flags}
print(json.dumps([(a, text(m), c.__module__, c.__qualname__, text(mod), n) for a, m, c, mod, n in warnings.filters]))"""


def _fresh_warning_filters() -> list:
    """The warning filters of a fresh `python -m mtlrun` once torch and Hydra are imported (pytest changes this
    process's; asked once per worker)."""
    global _FRESH_FILTERS
    if _FRESH_FILTERS is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
        _FRESH_FILTERS = [(action, _pattern(message), _class(module, qualname), _pattern(mod), lineno)
                          for action, message, module, qualname, mod, lineno in json.loads(probe.stdout)]
    return list(_FRESH_FILTERS)


def _pattern(text):
    return re.compile(text["regex"], text["flags"]) if isinstance(text, dict) else text


def _class(module: str, qualname: str):
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


@contextmanager
def _torch_state():
    saved = (torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.is_grad_enabled(), torch.get_num_threads(),
             torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(False)
    torch.set_grad_enabled(True)
    torch.manual_seed(TORCH_DEFAULT_SEED)
    try:
        yield
    finally:
        dtype, deterministic, warn_only, grad, threads, torch_rng, np_rng, py_rng = saved
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)


@contextmanager
def _signal_handlers():
    catchable = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
    saved = {s: signal.getsignal(s) for s in catchable}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


@contextmanager
def _hydra_state():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobRuntime
    from omegaconf.basecontainer import BaseContainer

    per_run = (GlobalHydra, HydraConfig, JobRuntime)  # the rest (ConfigStore, Plugins) is filled at import
    saved = {cls: Singleton._instances.pop(cls, None) for cls in per_run}
    resolvers = dict(BaseContainer._resolvers)
    try:
        yield
    finally:
        for cls, instance in saved.items():
            Singleton._instances.pop(cls, None)
            if instance is not None:
                Singleton._instances[cls] = instance
        BaseContainer._resolvers = resolvers


@contextmanager
def _mtlrun_state():
    from mtlrun.engine import rundir

    held = set(rundir._held)
    _forget_per_process_caches()
    try:
        yield
    finally:
        for run_dir in set(rundir._held) - held:  # held until the process exits
            os.close(rundir._held.pop(run_dir)[0])
        _forget_per_process_caches()


def _forget_per_process_caches():
    """What an mtlrun process keeps until it exits: a sweep's job outcomes, sample rates logged once, loaded
    tokenizers (only in the modules imported so far)."""
    for module, cache in (("mtlrun.sweep", "_outcomes"), ("mtlrun.data.media", "_logged_rates"),
                          ("mtlrun.data.hf_tokenizer", "_loaded")):
        if module in sys.modules:
            getattr(sys.modules[module], cache).clear()
