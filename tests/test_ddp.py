"""DDP with two CPU processes (gloo): one run dir, rank 0 writes, every eval sample counted once."""

from __future__ import annotations

import sys

from conftest import TINY, read_results, run_cli


def test_torchrun_two_processes(tmp_path):
    # odd split sizes: shards are uneven, so padding or dropping samples would change the counts
    args = [*TINY, "data.n_val=101", "data.n_test=157", "data.eval_batch_size=16", "trainer.max_epochs=2"]
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
    ddp = read_results(run)

    # single-process evaluation of the same checkpoint sees every sample once as well
    for split, n in (("test", 157), ("val", 101)):
        ev = tmp_path / f"ev_{split}"
        single = run_cli("eval", f"checkpoint={run / 'checkpoints/best.pt'}", f"split={split}",
                         f"hydra.run.dir={ev}", cwd=tmp_path)
        assert single.returncode == 0, single.stderr
        measured = read_results(ev)
        for task in ("left", "right"):
            key = f"{split}/{task}/accuracy"
            assert measured[key] == ddp[key]
            assert abs(measured[key] * n - round(measured[key] * n)) < 1e-9  # a count over exactly n samples
            assert abs(measured[f"{split}/{task}/loss"] - ddp[f"{split}/{task}/loss"]) < 1e-5
