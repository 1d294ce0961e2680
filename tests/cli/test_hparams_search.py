"""Hyperparameter search: `mtlrun train` returns one number to Hydra (`optimized_metric`, mtlrun/objective.py),
so hydra-optuna-sweeper optimises it (`mtlrun train -m hparams_search=...`, configs/hparams_search/); a failed
trial is a failed Optuna trial, recorded like any failed sweep job (mtlrun/sweep.py)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from contracts import TINY, read_results, run_cli
from mtlrun import cli, objective
from mtlrun.build import build_tasks
from mtlrun.config import config_dir, config_groups
from mtlrun.errors import UsageError
from mtlrun.instantiate import instantiate_node
from mtlrun.tasks import Classification, Regression

PRESETS = config_groups()["hparams_search"]
SMALL_DATA = ["data.n_train=16", "data.n_val=8", "data.n_test=8"]
TASKS = {"left": Classification(num_classes=10), "size": Regression()}


# ----------------------------------------------------------------------------------------- the objective
def test_null_is_the_checkpoint_monitor_with_its_direction():
    assert objective.resolve(None, "auto", "auto", TASKS) == objective.Objective("val/monitor", "maximize")
    assert objective.resolve(None, "val/size/mae", "auto", TASKS) == objective.Objective("val/size/mae", "minimize")
    assert objective.resolve(None, "left/accuracy", "auto", TASKS) == objective.Objective("val/left/accuracy",
                                                                                          "maximize")
    # the monitor's own mode wins for the monitor; another key has its metric's direction
    assert objective.resolve(None, "val/size/mae", "max", TASKS).direction == "maximize"
    assert objective.resolve("test/size/mae", "val/size/mae", "max", TASKS).direction == "minimize"


def test_a_results_key_has_its_metrics_direction():
    assert objective.resolve("test/left/accuracy", "auto", "auto", TASKS).direction == "maximize"
    assert objective.resolve("val/left/loss", "auto", "auto", TASKS).direction == "minimize"
    assert objective.resolve("test/size/rmse", "auto", "auto", TASKS).direction == "minimize"


@pytest.mark.parametrize("key", ["val/left/acc", "train/left/loss", "val/nope/loss", "left/accuracy", 3])
def test_a_key_no_run_measures_lists_the_valid_ones(key):
    with pytest.raises(UsageError) as info:
        objective.resolve(key, "auto", "auto", TASKS)
    message = str(info.value)
    assert message.startswith(f"optimized_metric={key}: not a metric this run measures; valid: null (")
    for valid in ("val/monitor", "val/left/accuracy", "test/left/macro_f1", "val/size/loss", "test/size/rmse"):
        assert valid in message


def test_the_value_comes_from_the_metrics_or_the_monitor():
    metrics = {"val/left/accuracy": 0.5, "test/left/accuracy": 0.25, "val/left/loss": float("nan")}
    assert objective.Objective("test/left/accuracy", "maximize").value(metrics, 0.9) == 0.25
    assert objective.Objective("val/monitor", "maximize").value(metrics, 0.9) == 0.9
    assert objective.Objective("val/left/loss", "minimize").value(metrics, 0.9) is None  # Optuna refuses NaN


def test_the_sweepers_direction_must_agree():
    goal = objective.Objective("val/left/loss", "minimize")
    objective.check_sweeper_direction(goal, None, "val/left/loss")  # the basic sweeper has none
    objective.check_sweeper_direction(goal, "minimize", "val/left/loss")
    objective.check_sweeper_direction(goal, ["minimize"], "val/left/loss")
    with pytest.raises(UsageError, match=r"^hydra.sweeper.direction=maximize, but optimized_metric=val/left/loss "
                                         r"is to minimize; set hydra.sweeper.direction=minimize"):
        objective.check_sweeper_direction(goal, "maximize", "val/left/loss")
    with pytest.raises(UsageError, match=r"optimized_metric=null \(val/monitor\) is to maximize"):
        objective.check_sweeper_direction(objective.Objective("val/monitor", "maximize"), "minimize", None)
    with pytest.raises(UsageError, match="mtlrun train returns one value"):
        objective.check_sweeper_direction(goal, ["minimize", "maximize"], "val/left/loss")
    # monitor=auto is relative to each run's first validation: no objective for comparing trials
    with pytest.raises(UsageError, match=r"trainer.monitor=auto: auto is the relative change against each run's "
                                         r"own first validation.*set trainer.monitor=mean"):
        objective.check_sweeper_direction(objective.Objective("val/monitor", "maximize"), "maximize", None, "auto")
    objective.check_sweeper_direction(objective.Objective("val/monitor", "maximize"), "maximize", None, "mean")
    objective.check_sweeper_direction(goal, "minimize", "val/left/loss", "auto")  # a named metric compares


# ------------------------------------------------------------------------------------------- the presets
def test_the_presets_are_found():
    assert {"weighting_lr", "static_weights", "famo"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_searches_keys_the_config_has_in_the_direction_of_its_metric(preset):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={preset}", *SMALL_DATA], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith(".OptunaSweeper") and sweeper.sampler.seed == 0
    assert sweeper.n_trials >= 10 and sweeper.n_jobs == 1 and sweeper.max_failure_rate == 1.0
    assert sweeper.params
    for key, space in sweeper.params.items():
        group = key.replace(".", "/")
        if group in config_groups():  # a choice of group options: each one exists
            options = str(space).removeprefix("choice(").removesuffix(")").replace(" ", "").split(",")
            assert set(options) <= set(config_groups()[group]), key
        else:  # a number of the composed config, searched in a log interval around its value
            assert isinstance(OmegaConf.select(cfg, key), float), key
            assert str(space).startswith("tag(log, interval("), key
    tasks = build_tasks(cfg, instantiate_node(cfg.data, "data").spec)
    goal = objective.resolve(cfg.optimized_metric, cfg.trainer.monitor, cfg.trainer.monitor_mode, tasks)
    objective.check_sweeper_direction(goal, sweeper.direction, cfg.optimized_metric)


def test_without_the_sweeper_plugin_a_search_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper", None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "-m", "hparams_search=weighting_lr"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: hparams_search=weighting_lr: an Optuna search needs "
                                       "hydra-optuna-sweeper, which is not installed; pip install \"mtlrun[optuna]\"\n")


# ------------------------------------------------------------------------------------ sweeps, end to end
def _jobs(sweep_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    """A 3-trial Optuna search on TINY runs, minimising val/right/loss."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    root = tmp_path_factory.mktemp("optuna")
    proc = run_cli("train", "-m", "hparams_search=static_weights", *TINY, "hydra.sweeper.n_trials=3",
                   "optimized_metric=val/right/loss", "hydra.sweeper.direction=minimize",
                   f"hydra.sweep.dir={root / 'sweep'}",
                   cwd=root)
    return root, proc


@pytest.mark.e2e
def test_an_optuna_search_runs_its_trials_and_finds_the_best(optuna_sweep):
    root, proc = optuna_sweep
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _jobs(root / "sweep")
    assert sorted(jobs) == [0, 1, 2]
    values = {}
    for num, job in jobs.items():
        results = json.loads((job / "results.json").read_text())
        assert results["optimized_metric"]["key"] == "val/right/loss"
        assert results["optimized_metric"]["direction"] == "minimize"
        values[num] = results["optimized_metric"]["value"]
        assert values[num] == read_results(job)["val/right/loss"]
    best = yaml.safe_load((root / "sweep" / "optimization_results.yaml").read_text())
    best_num = min(values, key=values.get)
    assert best["best_value"] == values[best_num]
    overrides = yaml.safe_load((jobs[best_num] / ".hydra" / "overrides.yaml").read_text())
    for key, value in best["best_params"].items():
        assert f"{key}={value}" in overrides
    assert len({round(v, 12) for v in values.values()}) == 3  # three different trials


@pytest.mark.e2e
def test_each_trial_returns_its_results_value(optuna_sweep):
    """What train returns is logged as it returns it (exactly: repr); Optuna's best value, checked above, is
    one of them. (Optuna 2.10's own record of every trial, its RDB storage, needs SQLAlchemy < 2.)"""
    root, proc = optuna_sweep
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job in _jobs(root / "sweep").values():
        logged = re.findall(r"optimized_metric val/right/loss = (\S+) \(to minimize\): returned to Hydra",
                            (job / "train.log").read_text())
        assert [float(v) for v in logged] == [read_results(job)["val/right/loss"]]


# Two trials: with this seed the first draws the invalid learning rate, the second trains. (Not the grid sampler:
# it visits the grid in a random order, and when its last trial fails hydra-optuna-sweeper 1.3 raises.)
FAILING_PRESET = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: random
trainer:
  monitor: mean   # auto does not compare between trials
hydra:
  sweeper:
    direction: maximize
    n_trials: 2
    n_jobs: 1
    sampler:
      seed: 0
    params:
      optim.lr: choice(0.003, -1.0)
"""


@pytest.mark.e2e
def test_a_failed_trial_is_a_failed_sweep_job_and_the_search_goes_on(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    (tmp_path / "my_configs" / "hparams_search").mkdir(parents=True)
    (tmp_path / "my_configs" / "hparams_search" / "one_fails.yaml").write_text(FAILING_PRESET)
    proc = run_cli("train", "-m", "--config-dir", "my_configs", "hparams_search=one_fails", *TINY,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # the failure was a usage error
    assert "Traceback" not in out
    jobs = _jobs(tmp_path / "sweep")
    failed = [job for job in jobs.values() if (job / "error.json").is_file()]
    succeeded = [job for job in jobs.values() if (job / "results.json").is_file()]
    assert failed == [jobs[0]] and succeeded == [jobs[1]], out  # the search went on after the failure
    error = json.loads((failed[0] / "error.json").read_text())
    assert "optim.lr=-1.0" in error["overrides"] and "optim.lr=-1.0" in error["error"]
    assert "sweep: 2 job(s) ran, 1 succeeded, 1 failed\n  job 0 [optim.lr=-1.0]: invalid config" in proc.stderr
    results = json.loads((succeeded[0] / "results.json").read_text())
    assert results["optimized_metric"]["key"] == "val/monitor"  # null: the checkpoint monitor
    assert math.isclose(results["optimized_metric"]["value"], results["monitor"]["value"], abs_tol=1e-12)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best == {"name": "optuna", "best_params": {"optim.lr": 0.003},
                    "best_value": results["optimized_metric"]["value"]}


@pytest.mark.e2e
def test_a_search_whose_every_trial_fails_ends_like_any_failed_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli("train", "-m", "hparams_search=weighting_lr", *TINY, "hydra.sweeper.n_trials=1",
                   "optimized_metric=val/left/acc", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "error: job 0 failed: optimized_metric=val/left/acc: not a metric this run measures; valid: null " \
           "(the checkpoint monitor, val/monitor), val/monitor, val/left/loss, val/left/accuracy" in proc.stderr
    assert "sweep: 1 job(s) ran, 0 succeeded, 1 failed" in proc.stderr
    assert "no trial succeeded" in out
    assert (tmp_path / "sweep" / "0" / "error.json").is_file()
    assert not (tmp_path / "sweep" / "0" / "checkpoints").exists()  # refused before training
    assert not (tmp_path / "sweep" / "optimization_results.yaml").exists()
