"""A multirun sweep survives a failing job: the job's error.json, the other jobs' results, the summary and
exit code, and `mtlrun report` listing the failed job (mtlrun/sweep.py)."""

from __future__ import annotations

import csv
import json
import warnings

import pytest

from contracts import TINY, read_results, run_cli

ONE_EPOCH = [*TINY, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory):
    """`-m tasks.only=[left],[nope],[right]`: job 1 names an unknown task (a usage error)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "sweep"
    proc = run_cli("train", "-m", *ONE_EPOCH, "tasks.only=[left],[nope],[right]", f"hydra.sweep.dir={sweep}",
                   cwd=root)
    return sweep, proc


@pytest.mark.e2e
def test_other_jobs_run_and_the_failure_is_recorded(failed_sweep):
    sweep, proc = failed_sweep
    assert proc.returncode == 2, proc.stdout + proc.stderr  # every failure was a usage error
    assert "Traceback" not in proc.stderr + proc.stdout
    assert set(read_results(sweep / "0")) >= {"test/left/accuracy"}
    assert set(read_results(sweep / "2")) >= {"test/right/accuracy"}
    assert not (sweep / "0" / "error.json").exists() and not (sweep / "1" / "results.json").exists()
    record = json.loads((sweep / "1" / "error.json").read_text())
    assert record["status"] == "failed" and record["job"] == 1 and record["exit_code"] == 2
    assert "tasks.only=[nope]" in record["overrides"] and "tasks.only" in record["error"]
    assert "tasks.only" in (sweep / "1" / "train.log").read_text()  # the job's log has the error too


@pytest.mark.e2e
def test_summary_names_the_failed_job(failed_sweep):
    _, proc = failed_sweep
    summary = proc.stderr[proc.stderr.index("sweep: "):]
    assert summary.startswith("sweep: 3 job(s) ran, 2 succeeded, 1 failed")
    line = next(line for line in summary.splitlines() if line.startswith("  job 1 "))
    assert "[tasks.only=[nope]]" in line and "tasks.only" in line.split("]:", 1)[1]
    assert "job 0" not in summary and "job 2" not in summary


@pytest.mark.e2e
def test_report_lists_the_failed_job(failed_sweep):
    sweep, _ = failed_sweep
    proc = run_cli("report", str(sweep), cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    failed_part = proc.stdout[proc.stdout.index("## Failed jobs (1"):]
    assert str(sweep / "1") in failed_part and "tasks.only=[nope]" in failed_part
    assert "STL left" in proc.stdout and "STL right" in proc.stdout  # the two finished runs are compared
    assert "## Failed jobs (1" in (sweep / "report.md").read_text()
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    failed = [r for r in rows if r["kind"] == "failed"]
    assert len(failed) == 1 and failed[0]["run_dirs"] == str(sweep / "1") and "tasks.only" in failed[0]["error"]
    assert all(r["error"] == "" for r in rows if r["kind"] != "failed")


@pytest.mark.e2e
def test_run_failure_exits_1_and_unknown_group_option_still_exits_2(tmp_path):
    # a non-finite loss in job 0 is a run failure (exit 1) even though job 1 succeeds
    sweep = tmp_path / "sweep"
    proc = run_cli("train", "-m", *ONE_EPOCH, "optim.lr=1e30,1e-3",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((sweep / "0" / "error.json").read_text())["exit_code"] == 1
    assert (sweep / "1" / "results.json").is_file()
    assert "sweep: 2 job(s) ran, 1 succeeded, 1 failed" in proc.stderr
    # an unknown group option fails in Hydra before any job: a usage error, no job dir
    proc = run_cli("train", "-m", *ONE_EPOCH, "weighting=static,nope", f"hydra.sweep.dir={tmp_path / 'bad'}",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "sweep: " not in proc.stderr
    assert not (tmp_path / "bad" / "0").exists()


def test_exit_code_and_headline_without_a_sweep():
    from mtlrun.sweep import JobOutcome, exit_code, headline, summary

    ok = JobOutcome(0, "d/0", ["seed=0", "lr=1"])
    usage = JobOutcome(1, "d/1", ["seed=1", "lr=1"], error="invalid config (2 problem(s)):\n  - a: x\n  - b: y",
                       exit_code=2)
    broken = JobOutcome(2, "d/2", ["seed=2", "lr=1"], error="non-finite loss", exit_code=1)
    assert exit_code([ok]) == 0 and exit_code([ok, usage]) == 2 and exit_code([ok, usage, broken]) == 1
    assert headline(usage.error) == "invalid config (2 problem(s)): a: x ..."
    assert "  job 1 [seed=1]: invalid config" in summary([ok, usage, broken])  # lr=1 is common to all jobs


@pytest.mark.e2e
def test_submitit_local_launcher_runs_the_jobs_and_keeps_the_bookkeeping(tmp_path):
    """hydra/launcher=submitit_local runs each job in a process of its own: the jobs' results, the failed job's
    error.json, and the summary and exit code, which the sweep process reads back from the job dirs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    # two jobs, each a fresh interpreter that imports torch and mtlrun (seconds of CPU each): one that succeeds
    # with its own override and one that fails
    proc = run_cli("train", "-m", *TINY, "data.n_train=64", "data.n_val=32", "data.n_test=32",
                   "tasks.only=[left],[nope]", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path, timeout=600, process=True)  # the sweep process too: in-process it ran 5x slower
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # the one failure is a usage error
    assert "Submitit 'local' sweep" in proc.stdout
    assert set(read_results(sweep / "0")) >= {"test/left/accuracy"} and "test/right/accuracy" not in read_results(sweep / "0")
    error = json.loads((sweep / "1" / "error.json").read_text())
    assert error["exit_code"] == 2 and "nope" in error["error"] and not (sweep / "1" / "results.json").exists()
    assert "sweep: 2 job(s) ran, 1 succeeded, 1 failed" in proc.stderr
    assert "job 1 [tasks.only=[nope]]: invalid config" in proc.stderr


def test_submitit_slurm_preset_runs_one_rank_per_gpu():
    """configs/hydra/launcher/slurm.yaml: tasks_per_node follows gpus_per_node, so srun starts one
    task per GPU and mtlrun's SLURM reading makes them one DDP job; SIGUSR1 comes ahead of the time limit."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from mtlrun.config import config_dir

    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with warnings.catch_warnings(record=True) as caught, \
            initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        warnings.simplefilter("always")
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8",
                                          "hydra.launcher.nodes=2"], return_hydra_config=True)
    # the preset extends the plugin's schema through its defaults list, not Hydra's deprecated name matching
    assert not [w for w in caught if "ConfigStore schema" in str(w.message)]
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 8 and launcher.nodes == 2 and launcher.signal_delay_s > 0
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"


def test_submitit_launcher_without_the_extra_names_it(monkeypatch, capsys):
    import importlib.util

    from mtlrun import sweep

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert sweep.launcher_installed(["-m", "seed=0,1", "hydra/launcher=slurm"]) is False
    assert 'hydra/launcher=slurm needs hydra-submitit-launcher: pip install "mtlrun[slurm]"' in \
        capsys.readouterr().err
    assert sweep.launcher_installed(["-m", "seed=0,1"]) is True
