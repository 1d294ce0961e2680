"""Beyond one process on one machine: two torchrun "nodes" form one job; `srun mtlrun train` (SLURM's task
variables, no torchrun) forms one job; SIGUSR1 to one rank stops every rank at the same step and resume is
exact; a resume under another world size works; a sweep under torchrun/srun with a launcher that would
submit its jobs once per rank is refused."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from contracts import EXACT, cli_env, free_port, popen, read_results, run_cli, start_slurm_tasks
from mtlrun.build import build_components
from mtlrun.engine.evaluate import evaluate_split

pytestmark = pytest.mark.e2e  # every test starts processes

# 3 epochs of 16 steps per rank (2 ranks x batch 32 over 1024 samples); ranks agree on a stop every 4 steps.
# Odd eval splits: the ranks' shards are uneven, so a padded or dropped sample would change the counts.
# A two-stage CNN: what these tests check is the job, not the model (a DDP step takes 10-25 ms here).
RUN = [*EXACT, "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "data.n_train=1024",
       "data.n_val=101", "data.n_test=157", "data.eval_batch_size=16", "trainer.max_epochs=3",
       "trainer.log_every_n_steps=4"]


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """RUN as two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1); (run dir, outputs)."""
    cwd = tmp_path_factory.mktemp("nodes")
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=mtlrun",
               "-m", "mtlrun", "train", *RUN]
        procs.append(popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    runs = [p for p in (cwd / "outputs" / "train").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # the two nodes agreed on one run directory
    return runs[0], outputs


def test_two_nodes_form_one_job(two_node_run):
    run, outputs = two_node_run
    stdout = [out for out, _ in outputs]
    assert sum("world size 2" in out for out in stdout) == 1  # rank 0 (either node) reports, once
    assert sum(out.count("best checkpoint") for out in stdout) == 1
    assert len(list(run.glob("*.log"))) == 1 and len(list(run.glob("results.json"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp files left
    state = torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert len(state["rng"]) == 2 and state["global_step"] == 3 * 16  # one checkpoint of a 2-rank job
    rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["train", "val"] * 3 + ["test"]  # written once

    # every test sample counted once: the job's test metrics are a one-process evaluation of best.pt
    results = read_results(run)
    best = torch.load(run / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    parts = build_components(OmegaConf.create(best["config"]), data_state=best["data"])
    parts.model.load_state_dict(best["model"])
    single = evaluate_split(parts.model, parts.tasks, parts.data.eval_loader("test", device=torch.device("cpu")),
                            device=torch.device("cpu"))
    for task in ("left", "right"):
        accuracy = results[f"test/{task}/accuracy"]
        assert accuracy == single[f"{task}/accuracy"]
        assert abs(accuracy * 157 - round(accuracy * 157)) < 1e-9  # a count over exactly 157 samples
        assert results[f"test/{task}/loss"] == pytest.approx(single[f"{task}/loss"], abs=1e-5)


def test_resume_under_another_world_size_warns_and_continues(two_node_run, tmp_path):
    run, _ = two_node_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".mtlrun.lock"))
    proc = run_cli("train", f"resume={copy / 'checkpoints/last.pt'}", "trainer.max_epochs=4",
                   f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint has RNG states of 2 rank(s), this run has 1" in proc.stdout + proc.stderr
    state = torch.load(tmp_path / "resumed/checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 4 and state["global_step"] == 3 * 16 + 32  # one rank takes 32 steps an epoch
    rows = (tmp_path / "resumed/metrics.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["train", "val"] * 4 + ["test"]


def test_srun_tasks_form_one_job_and_sigusr1_to_one_rank_stops_both_at_one_step(two_node_run, tmp_path):
    """SLURM sends SIGUSR1 ahead of a time limit; here only rank 1 gets it. Both stop at the same step, rank 0
    saves, both exit 128 + 10, and the resumed job (srun again) ends exactly where the uninterrupted one did."""
    reference, _ = two_node_run
    stopped = tmp_path / "stopped"
    procs = start_slurm_tasks("train", *RUN, f"hydra.run.dir={stopped}", cwd=tmp_path)
    for line in procs[0].stdout:
        # At once: rank 0 logs epoch 1 just before writing its checkpoint, which rank 1 waits for, so the signal
        # reaches rank 1 there or in the first steps of epoch 2 and the ranks agree at step 20 (or 24), 20 steps
        # or more (a fifth to half a second) before step 44, the last log step that stops the run before its
        # end. No sleep first: it would spend that margin.
        if line.startswith("epoch 1/3"):
            procs[1].send_signal(signal.SIGUSR1)
            break
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [138, 138], [o[-2000:] + e[-2000:] for o, e in outputs]
    assert "world size 2" in (stopped / "train.log").read_text()  # one job of two ranks, not two runs
    last = stopped / "checkpoints" / "last.pt"
    assert f"resume with: mtlrun train resume={last}" in outputs[0][0] + outputs[0][1]
    assert not (stopped / "results.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert len(state["rng"]) == 2 and 16 <= state["global_step"] < 48
    assert state["global_step"] % 4 == 0  # the ranks agreed at a log step

    procs = start_slurm_tasks("train", f"resume={last}", cwd=tmp_path)
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] + e[-2000:] for o, e in outputs]
    mine, straight = _weights(stopped), _weights(reference)
    assert mine.keys() == straight.keys()
    for key in mine:
        assert torch.equal(mine[key], straight[key]), key
    assert (stopped / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert read_results(stopped) == read_results(reference)


def test_sweep_under_srun_with_a_launcher_that_submits_per_rank_is_refused(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    procs = start_slurm_tasks("train", "-m", *EXACT, "seed=0,1", "hydra/launcher=submitit_local",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    outputs = [p.communicate(timeout=200) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs
    for _, err in outputs:
        assert "error: a -m sweep under torchrun/srun" in err and "hydra/launcher=LocalLauncher" in err
        assert "Traceback" not in err
    assert not (tmp_path / "sweep").exists()  # no job was submitted
