"""data=mixture end to end: exact resume, DDP (2 gloo ranks), accumulation, eval and predict per source."""

from __future__ import annotations

import sys

import pytest
import torch

from contracts import read_csv, read_results, run_cli

pytestmark = pytest.mark.e2e

# big: 96 samples (left, right), small: 32 (parity); constant lr, so 1 + 1 epochs resumed equal 2 straight
MIX = ["data=mixture", "tasks=from_data", "trainer.device=cpu", "trainer.progress_bar=false",
       "scheduler=constant", "optim.lr=0.003", "backbone.image.channels=[8,16]", "backbone.image.out_dim=32",
       "data.sources.big.n_train=96", "data.sources.big.n_val=24", "data.sources.big.n_test=24",
       "data.sources.big.batch_size=16", "data.sources.big.eval_batch_size=12",
       "data.sources.small.n_train=32", "data.sources.small.n_val=12", "data.sources.small.n_test=10",
       "data.sources.small.batch_size=16", "data.sources.small.eval_batch_size=12"]


def _weights(run):
    return torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("sampling, accumulate", [("temperature", 2), ("all", 1)])
def test_resumed_mixture_run_equals_the_straight_one(tmp_path, sampling, accumulate):
    """5 steps an epoch: with accumulate=2, windows of 2, 2 and 1 micro-batches, each drawing its source."""
    args = [*MIX, f"data.sampling={sampling}", "data.steps_per_epoch=5", f"trainer.accumulate={accumulate}"]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    assert run_cli("train", *args, "trainer.max_epochs=2", f"hydra.run.dir={straight}", cwd=tmp_path).returncode == 0
    assert run_cli("train", *args, "trainer.max_epochs=1", f"hydra.run.dir={first}", cwd=tmp_path).returncode == 0
    proc = run_cli("train", f"resume={first / 'checkpoints/last.pt'}", "trainer.max_epochs=2",
                   f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()
    assert read_results(straight) == read_results(resumed)
    state = torch.load(resumed / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert set(state["data"]) == {"big", "small"}  # each source's state
    for row in (r for r in read_csv(resumed / "metrics.csv") if r["split"] == "train"):  # batches read of each
        drawn = int(row["draws/big"]), int(row["draws/small"])
        assert drawn == (5, 5) if sampling == "all" else sum(drawn) == 5


def test_accumulated_run_evaluates_and_predicts_each_source(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *MIX, "data.sampling=all", "weighting=pcgrad", "trainer.accumulate=2",
                   "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = {k: v for k, v in read_results(run).items() if k.startswith("test/")}
    assert {k for k in results if k.endswith("/accuracy")} == \
        {"test/left/accuracy", "test/right/accuracy", "test/parity/accuracy"}
    assert abs(results["test/parity/accuracy"] * 10 - round(results["test/parity/accuracy"] * 10)) < 1e-9  # small's 10

    best = run / "checkpoints/best.pt"
    proc = run_cli("eval", f"checkpoint={best}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path / "eval") == results
    proc = run_cli("eval", f"checkpoint={best}", "data.batch_size=7", f"hydra.run.dir={tmp_path / 'eval7'}",
                   cwd=tmp_path)  # every source's evaluation batch size
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path / "eval7") == pytest.approx(results, abs=1e-5)

    proc = run_cli("predict", f"checkpoint={best}", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert proc.returncode == 2 and "data.source=<name>" in proc.stderr
    proc = run_cli("predict", f"checkpoint={best}", "data.source=small", f"hydra.run.dir={tmp_path / 'p2'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(tmp_path / "p2" / "predictions.csv")
    assert [r["id"] for r in rows] == [str(i) for i in range(10)] and {"left", "parity"} <= set(rows[0])


def test_mixture_usage_errors_stop_before_training(tmp_path):
    proc = run_cli("train", *MIX, "data.sampling=temperature", "data.temperature=-1", "data.sources.small.n_val=0",
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.sources.small.n_val=0" in proc.stderr
    proc = run_cli("train", *MIX, "data.sampling=temperature", "data.temperature=-1",
                   f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path)
    assert proc.returncode == 2 and "data.temperature=-1: must be a number > 0" in proc.stderr
    assert not (tmp_path / "r2" / "checkpoints").exists() or not list((tmp_path / "r2").rglob("*.pt"))


SAMPLINGS = ("temperature", "all")


@pytest.fixture(scope="module")
def mixture_sweep_under_torchrun(tmp_path_factory):
    """`torchrun --nproc_per_node=2 -m mtlrun train -m data.sampling=temperature,all`: one launch, each job a
    DDP run of both ranks; three processes' start-up paid once."""
    root = tmp_path_factory.mktemp("ddp_mixture")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtlrun"]
    proc = run_cli("train", "-m", *MIX, f"data.sampling={','.join(SAMPLINGS)}", "trainer.max_epochs=1",
                   f"hydra.sweep.dir={root / 'sweep'}", cwd=root, launcher=launcher, timeout=300)
    return root / "sweep", proc


@pytest.mark.parametrize("job, sampling", list(enumerate(SAMPLINGS)))
def test_torchrun_two_ranks_train_a_mixture(mixture_sweep_under_torchrun, tmp_path, job, sampling):
    """Every rank draws the same source at each step (a pure function of seed, epoch, step): the gradients DDP
    averages are the same tasks'. sampling=all averages them by hand (one forward per source)."""
    sweep, proc = mixture_sweep_under_torchrun
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = sweep / str(job)
    assert f"data.sampling={sampling}" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "world size 2" in "\n".join(f.read_text() for f in run.glob("*.log"))
    results = read_results(run)
    assert results["test/parity/accuracy"] is not None and results["test/left/accuracy"] is not None
    single = run_cli("eval", f"checkpoint={run / 'checkpoints/best.pt'}", f"hydra.run.dir={tmp_path / 'ev'}",
                     cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    for key, value in read_results(tmp_path / "ev").items():  # every sample of every source counted once
        assert value == pytest.approx(results[key], abs=1e-5), key
