"""The CLI end to end: help, Hydra features through the subcommand, run-dir contract, eval == train."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from contracts import TINY, compose_config, read_results, run_cli
from mtlrun.config import config_dir

pytestmark = pytest.mark.e2e  # every test starts the CLI (or reads the run of the session's trained_run)


def test_help_lists_commands_and_groups(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for text in ("train", "eval", "backbone/image   cnn, resnet18, resnet34, resnet50", "backbone/text    gru",
                 "fusion           concat, ", "experiment", "smoke", "robustness.modality=image",
                 "logger           csv, mlflow, tensorboard, wandb  (several: logger=[", "'logger=[csv,tensorboard]'"):
        assert text in proc.stdout


def test_no_command_or_unknown_command_is_usage_error(tmp_path):
    assert run_cli(cwd=tmp_path).returncode == 2
    proc = run_cli("fit", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown command 'fit'" in proc.stderr and "train, eval" in proc.stderr


def test_console_script_and_hydra_cfg_flag(tmp_path):
    exe = shutil.which("mtlrun")
    assert exe, "the mtlrun console script is not installed"
    proc = run_cli("train", "--cfg", "job", "backbone/image=resnet18", "trainer.max_epochs=3", cwd=tmp_path,
                   launcher=[exe])
    assert proc.returncode == 0, proc.stderr
    assert "_target_: mtlrun.models.backbone.image.ResNet" in proc.stdout
    assert "max_epochs: 3" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


def test_hydra_info_flag(tmp_path):
    proc = run_cli("train", "--info", "defaults", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "data/multidigits" in proc.stdout


def test_run_dir_contract(trained_run):
    run = trained_run
    for name in ("config.yaml", "metrics.csv", "results.json", "train.log", "curves.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "max_epochs: 2" in (run / "config.yaml").read_text()
    assert "${" not in (run / "config.yaml").read_text()  # fully resolved

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [(r["epoch"], r["split"]) for r in rows] == [("1", "train"), ("1", "val"), ("2", "train"),
                                                        ("2", "val"), (rows[-1]["epoch"], "test")]
    for col in ("left/accuracy", "left/macro_f1", "right/accuracy", "right/loss", "left/weight"):
        assert col in rows[0]
    assert 0.0 <= float(rows[1]["left/accuracy"]) <= 1.0

    payload = json.loads((run / "results.json").read_text())
    keys = set(payload["metrics"])
    assert {"test/left/accuracy", "test/left/macro_f1", "test/right/accuracy", "test/right/macro_f1"} <= keys
    assert payload["best_epoch"] in (1, 2)

    state = torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "global_step", "config",
                "mtlrun_version"):
        assert key in state
    assert state["epoch"] == 2 and state["config"]["trainer"]["max_epochs"] == 2


def test_eval_reproduces_train_test_metrics(trained_run, tmp_path):
    train_metrics = read_results(trained_run)
    best = trained_run / "checkpoints/best.pt"
    proc = run_cli("eval", f"checkpoint={best}", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    measured = read_results(tmp_path / "ev")
    assert measured == {k: v for k, v in train_metrics.items() if k.startswith("test/")}
    assert (tmp_path / "ev" / "metrics.csv").is_file() and (tmp_path / "ev" / "eval.log").is_file()
    assert "left" in proc.stdout and "accuracy" in proc.stdout  # the table

    # other split and another batch size: same samples, so the same counts
    proc = run_cli("eval", f"checkpoint={best}", "split=val", "data.batch_size=7", "trainer.device=cpu",
                   f"hydra.run.dir={tmp_path / 'ev2'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    val = read_results(tmp_path / "ev2")
    assert val["val/left/accuracy"] == train_metrics["val/left/accuracy"]
    assert val["val/right/accuracy"] == train_metrics["val/right/accuracy"]


def test_eval_refuses_training_overrides(trained_run, tmp_path):
    proc = run_cli("eval", f"checkpoint={trained_run / 'checkpoints/best.pt'}", "+optim.lr=0.1",
                   f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "Traceback" not in proc.stderr


def test_multirun_sweep(seed_sweep):
    results = [read_results(seed_sweep / str(i)) for i in (0, 1)]
    assert results[0]["test/left/accuracy"] != results[1]["test/left/accuracy"] or \
        results[0]["test/left/loss"] != results[1]["test/left/loss"]  # different seeds, different runs


def test_user_config_dir_adds_groups(tmp_path):
    groups = tmp_path / "myconf" / "backbone" / "image"
    groups.mkdir(parents=True)
    (groups / "tiny.yaml").write_text("_target_: mtlrun.models.backbone.image.SmallCNN\n"
                                      "channels: [8, 16]\nout_dim: 32\ndropout: 0.0\n")
    run = tmp_path / "run"
    proc = run_cli("train", "--config-dir", str(tmp_path / "myconf"), "backbone/image=tiny", *TINY,
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.load(run / "config.yaml").backbone.image.channels == [8, 16]
    state = torch.load(run / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    assert state["model"]["encoder.stages.0.0.weight"].shape[0] == 8


def test_default_run_dir_is_under_outputs(trained_run):
    # trained_run gave no hydra.run.dir: its run went to outputs/train/<date>/<time> under its working directory
    assert trained_run.parents[2].name == "outputs" and trained_run.parents[1].name == "train"
    assert [p for p in trained_run.parents[3].iterdir()] == [trained_run.parents[2]]  # and nowhere else
    assert (trained_run / "results.json").is_file()


# Each option set of the trainer, run end to end. One `mtlrun train -m +case=...` process runs them all (one
# start-up, not one per set): each set becomes a config of a user group `case`, which sets what its overrides
# and TINY's would set on the command line.
# Half precision on a CPU is slow (bf16 took 15 s of the sweep at TINY's sizes, float16 has no fast kernels):
# 2 steps, not 8, of a one-stage CNN show that it trains and scales (the three-stage one took 13.3 s against 8.1 s
# for a bf16 run, 9.9 s against 7.6 s for float16, start-up included; one run each on a loaded machine).
FEW = ["data.n_train=64", "data.n_val=32", "data.n_test=32"]
ONE_STAGE = "backbone.image.channels=[8]"
TRAINER_OPTIONS = {
    "bf16": ["trainer.precision=bf16", ONE_STAGE, *FEW],
    "fp16": ["trainer.precision=16", ONE_STAGE, *FEW],
    "accumulate-clip-sgd": ["trainer.accumulate=3", "trainer.grad_clip=1.0", "optim=sgd", "scheduler=multistep"],
    "limits": ["trainer.limit_train_batches=2", "trainer.limit_eval_batches=0.5", "trainer.early_stopping.patience=1"],
    "resnet18": ["backbone/image=resnet18", *FEW],
    # last: it leaves compiled code cached. One conv stage: what inductor compiles (a C++ kernel for each fused
    # op, forward and backward) takes 12 s less on a cold cache than the three-stage default (29 s against 41 s)
    "compile": ["trainer.compile=true", ONE_STAGE, *FEW],
}


def as_global_config(overrides: list[str]) -> str:
    """A `# @package _global_` YAML that does what `overrides` do on the command line: `group=option` becomes an
    override in its defaults list, `a.b=value` a value."""
    groups, values = [], {}
    for override in overrides:
        key, value = override.split("=", 1)
        if (Path(config_dir()) / key).is_dir():
            groups.append({f"override /{key}": value})
            continue
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return "# @package _global_\n" + yaml.safe_dump({"defaults": groups, **values} if groups else values,
                                                      sort_keys=False)


@pytest.fixture(scope="module")
def trainer_options_sweep(tmp_path_factory) -> dict[str, tuple]:
    """{option: (job dir, what to show if it has no results)} of one sweep over TRAINER_OPTIONS."""
    root = tmp_path_factory.mktemp("options")
    (root / "conf" / "case").mkdir(parents=True)
    base = [o for o in TINY if not o.startswith("experiment=")]
    for name, overrides in TRAINER_OPTIONS.items():
        (root / "conf" / "case" / f"{name}.yaml").write_text(as_global_config([*base, *overrides]))
    sweep = root / "sweep"
    proc = run_cli("train", "-m", "--config-dir", str(root / "conf"), "experiment=smoke",
                   f"+case={','.join(TRAINER_OPTIONS)}", f"hydra.sweep.dir={sweep}", cwd=root, timeout=900)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {}
    for job, name in enumerate(TRAINER_OPTIONS):
        run = sweep / str(job)
        assert (run / ".hydra" / "overrides.yaml").is_file(), output
        assert f"+case={name}" in (run / ".hydra" / "overrides.yaml").read_text()
        error = run / "error.json"
        jobs[name] = (run, error.read_text() if error.exists() else output)
    return jobs


def test_each_trainer_option_set_is_what_its_run_used(trainer_options_sweep):
    for name, overrides in TRAINER_OPTIONS.items():
        run, _ = trainer_options_sweep[name]
        expected = compose_config(["experiment=smoke", *[o for o in TINY if not o.startswith("experiment=")],
                                   *overrides])
        used = OmegaConf.load(run / "config.yaml")
        for section in ("data", "trainer", "optim", "scheduler", "backbone"):
            assert OmegaConf.to_container(used[section]) == OmegaConf.to_container(expected[section], resolve=True), \
                (name, section)


@pytest.mark.parametrize("option", list(TRAINER_OPTIONS))
def test_trainer_options_run_end_to_end(trainer_options_sweep, option):
    run, error = trainer_options_sweep[option]
    assert (run / "results.json").is_file(), error
    metrics = read_results(run)
    assert all(0.0 <= metrics[f"test/{t}/accuracy"] <= 1.0 for t in ("left", "right"))
    assert all(v == v for v in metrics.values())  # no NaN
