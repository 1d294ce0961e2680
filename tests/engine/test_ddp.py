"""DDP with two CPU processes (gloo): one run dir, rank 0 writes, every eval sample counted once."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from contracts import TINY, compose_config, read_results, run_cli
from mtlrun.build import build_components
from mtlrun.engine.ddp import unused_parameters
from mtlrun.engine.records import read_metrics_csv

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.mark.e2e
def test_torchrun_two_processes(tmp_path):
    # odd split sizes: shards are uneven, so padding or dropping samples would change the counts. What is
    # counted, not what is learned: a one-stage CNN, and 128 samples in batches of 16 (the 4 steps an epoch
    # per rank of TINY's 256 in 32s)
    args = [*TINY, "data.n_train=128", "data.batch_size=16", "backbone.image.channels=[8]",
            "backbone.image.out_dim=32", "data.n_val=101", "data.n_test=157", "data.eval_batch_size=16",
            "trainer.max_epochs=2", "trainer.log_every_n_steps=2", f"logger=[csv{',tensorboard' * HAS_TENSORBOARD}]"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "mtlrun"]
    proc = run_cli("train", *args, cwd=tmp_path, launcher=launcher, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "world size 2" in proc.stdout
    runs = [p for p in (tmp_path / "outputs" / "train").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks agreed on one run directory
    run = runs[0]
    assert proc.stdout.count("best checkpoint") == 1  # only rank 0 reports
    assert len(list(run.glob("*.log"))) == 1
    # only rank 0 writes the trackers: each log step once (4 steps an epoch per rank), one event file
    assert [r["step"] for r in read_metrics_csv(run / "steps.csv")] == [2, 4, 6, 8]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == HAS_TENSORBOARD
    ddp = read_results(run)

    # single-process evaluation of the same checkpoint sees every sample once as well (both splits: one sweep)
    single = run_cli("eval", "-m", f"checkpoint={run / 'checkpoints/best.pt'}", "split=test,val",
                     f"hydra.sweep.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    for job, (split, n) in enumerate((("test", 157), ("val", 101))):
        measured = read_results(tmp_path / "ev" / str(job))
        assert measured and all(key.startswith(f"{split}/") for key in measured), measured  # job <-> split
        for task in ("left", "right"):
            key = f"{split}/{task}/accuracy"
            assert measured[key] == ddp[key]
            assert abs(measured[key] * n - round(measured[key] * n)) < 1e-9  # a count over exactly n samples
            assert abs(measured[f"{split}/{task}/loss"] - ddp[f"{split}/{task}/loss"]) < 1e-5


FUSIONS = ("concat", "early")


@pytest.fixture(scope="module")
def fusion_sweep_under_torchrun(tmp_path_factory):
    """`torchrun --nproc_per_node=2 -m mtlrun train -m fusion=concat,early`: one launch, each job a DDP run of
    both ranks (the sweep runs in every rank's process); three processes' start-up paid once, not twice."""
    root = tmp_path_factory.mktemp("ddp_fusion")
    args = ["-m", "experiment=digits_av", f"fusion={','.join(FUSIONS)}", "data.n_train=64", "data.n_val=16",
            "data.n_test=16", "data.batch_size=16", "trainer.max_epochs=1", "trainer.device=cpu",
            "trainer.progress_bar=false", f"hydra.sweep.dir={root / 'sweep'}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "mtlrun"]
    return root / "sweep", run_cli("train", *args, cwd=root, launcher=launcher, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("job, fusion", list(enumerate(FUSIONS)))
def test_torchrun_multimodal_with_parameters_a_fusion_leaves_unused(fusion_sweep_under_torchrun, job, fusion):
    """concat reads vectors (the tabular encoder's token parameters stay unused), early reads tokens (the
    encoders' vector heads stay unused): DDP must be told, or its second step fails."""
    sweep, proc = fusion_sweep_under_torchrun
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = sweep / str(job)
    assert f"fusion={fusion}" in (run / ".hydra" / "overrides.yaml").read_text()
    log = "\n".join(f.read_text() for f in run.glob("*.log"))
    assert "world size 2" in log and "DDP runs with find_unused_parameters" in log
    assert "test/digit/accuracy" in read_results(run)


def test_unused_parameter_probe_names_them_and_leaves_the_rng_alone():
    parts = build_components(compose_config(["experiment=digits_av", "data.n_train=8", "data.n_val=4",
                                             "data.n_test=4"]))
    batch = parts.data.dataset("train").__getitems__([0, 1])
    model = parts.model.train()
    unused = unused_parameters(model, batch, torch.device("cpu"))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert unused == ["encoder.stages.0.encoders.tabular.numeric_weight",
                      "encoder.stages.0.encoders.tabular.token_bias"]  # concat reads vectors, not tokens
    single = build_components(compose_config(["data.n_train=8", "data.n_val=4", "data.n_test=4"]))
    assert unused_parameters(single.model, single.data.dataset("train").__getitems__([0, 1]),
                             torch.device("cpu")) == []


def test_unused_parameter_probe_restores_the_rng_a_model_draws_from():
    class Noisy(torch.nn.Module):  # a model that samples even in eval mode
        def __init__(self):
            super().__init__()
            self.used, self.spare = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

        def forward(self, inputs, modality_mask=None):
            return {"y": self.used(inputs["x"] + torch.rand_like(inputs["x"]))}

    model = Noisy()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    unused = unused_parameters(model, {"inputs": {"x": torch.zeros(2, 2)}}, torch.device("cpu"))
    assert unused == ["spare.weight", "spare.bias"]
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.e2e
def test_torchrun_sync_batchnorm_on_cpu_is_a_usage_error(tmp_path):
    """torch synchronises BatchNorm on CUDA only: on the CPU each rank stops at start-up with the key and the
    reason (exit 2, no traceback), instead of DDP's set-up failing with torch's own error."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "mtlrun"]
    proc = run_cli("train", *TINY, "trainer.sync_batchnorm=true", cwd=tmp_path, launcher=launcher, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert output.count("trainer.sync_batchnorm=true: torch synchronises BatchNorm statistics") == 2, output[-4000:]
    assert "SyncBatchNorm layers only work with GPU modules" not in output
    assert "exitcode  : 2" in output  # each worker's exit status, as torchrun reports it
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pt"))


@pytest.mark.e2e
def test_torchrun_tagging_metrics_are_those_of_one_process(tmp_path):
    """Entity P/R/F1 and macro-F1 from per-type counts summed over ranks: on uneven shards, exactly what one
    process measures on the same checkpoint."""
    args = ["experiment=text_tagging", "data.n_train=64", "data.n_val=37", "data.n_test=53", "data.batch_size=16",
            "data.eval_batch_size=8", "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false",
            "backbone.text.embed_dim=8", "backbone.text.hidden=8", f"hydra.run.dir={tmp_path / 'run'}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "mtlrun"]
    proc = run_cli("train", *args, cwd=tmp_path, launcher=launcher, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ddp = read_results(tmp_path / "run")
    single = run_cli("eval", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}",
                     f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    measured = read_results(tmp_path / "ev")
    for key in ("ner/f1", "ner/precision", "ner/recall", "chunk/f1", "pos/macro_f1", "pos/accuracy"):
        assert measured[f"test/{key}"] == pytest.approx(ddp[f"test/{key}"], rel=1e-12, abs=1e-12), key
