"""Bad input: a short message naming the key/file/task and what is valid, exit 2, no traceback."""

from __future__ import annotations

import pytest
import torch

from contracts import TINY, run_cli

pytestmark = pytest.mark.e2e  # every test starts the CLI


@pytest.mark.parametrize("overrides, fragments", [
    (["data=nope"], ["data/nope", "multidigits"]),
    (["backbone/image=vgg"], ["backbone/image/vgg", "resnet18"]),
    (["trainer.max_epochs=-1", "data.batch_size=0"],
     ["trainer.max_epochs=-1", "data.batch_size=0", "2 problem(s)"]),
    (["trainer.precision=8"], ["trainer.precision=8", "32, bf16, 16"]),
    (["trainer.device=tpu"], ["trainer.device=tpu", "auto, cpu, cuda, mps"]),
    (["trainer.device=cuda"], ["trainer.device=cuda", "CUDA is not available"]),
    (["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5", "fraction"]),
    (["tasks.left.num_classes=5"], ["tasks.left.num_classes=5", "10 classes", "tasks.left.num_classes=10"]),
    (["+tasks.digit._target_=mtlrun.tasks.Classification", "+tasks.digit.num_classes=10"],
     ["tasks.digit", "no target 'digit'", "left, right"]),
    (["tasks.left._target_=mtlrun.tasks.Regression"], ["tasks.left", "mtlrun.tasks.Regression", "num_classes"]),
    (["tasks.left._target_=mtlrun.tasks.Binary", "~tasks.left.num_classes", "~tasks.left.label_smoothing"],
     ["tasks.left", "binary task", "classification"]),
    (["trainer.monitor=val/left/acc"], ["trainer.monitor=val/left/acc", "val/left/accuracy"]),
    (["trainer.maxepochs=3"], ["maxepochs"]),
    (["backbone.image._target_=mtlrun.nothing.Here"], ["backbone", "mtlrun.nothing.Here"]),
    (["backbone/image=resnet18", "backbone.image.depth=20"], ["backbone.image.depth=20", "18, 34, 50"]),
], ids=["unknown-data", "unknown-backbone", "negative-epochs-and-batch-0", "precision", "device-name",
        "device-missing", "limit", "class-count", "unknown-task", "task-args", "task-kind", "monitor", "unknown-key",
        "bad-target", "resnet-depth"])
def test_usage_errors(tmp_path, overrides, fragments):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    for fragment in fragments:
        assert fragment in out, (fragment, out)
    assert "Traceback" not in out
    assert not (run / "results.json").exists()


def test_full_error_shows_traceback(tmp_path):
    proc = run_cli("train", *TINY, "trainer.max_epochs=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "trainer.max_epochs=0" in proc.stderr


def test_pretrained_weights_missing_says_where_to_put_them(tmp_path):
    proc = run_cli("train", *TINY, "backbone/image=resnet18", "backbone.image.pretrained=true",
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "th")})
    assert proc.returncode == 2
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet18-") in proc.stderr
    assert "backbone.image.pretrained=false" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["missing", "directory", "corrupt", "foreign"])
def test_bad_checkpoint(tmp_path, kind):
    path = tmp_path / "ckpt.pt"
    if kind == "directory":
        path = tmp_path
    elif kind == "corrupt":
        path.write_bytes(b"\x80\x02garbage" * 50)
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    proc = run_cli("eval", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"checkpoint={path}" in proc.stderr and "Traceback" not in proc.stderr
    expected = {"missing": "no such file", "directory": "checkpoints/last.pt", "corrupt": "cannot be read",
                "foreign": "not a mtlrun checkpoint"}[kind]
    assert expected in proc.stderr
    assert not (tmp_path / "ev" / "results.json").exists()


def test_eval_without_checkpoint(tmp_path):
    proc = run_cli("eval", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "checkpoint=PATH" in proc.stderr


def test_nonfinite_loss_names_step_and_task(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "optim=sgd", "optim.lr=1e30", "trainer.log_every_n_steps=2",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "non-finite loss for task 'left' at step 2 (epoch 1)" in proc.stderr
    assert "trainer.skip_nonfinite=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "results.json").exists()
    assert not (run / "checkpoints" / "last.pt").exists()  # the broken weights never reach a checkpoint


def test_skip_nonfinite_skips_and_reports(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "optim=sgd", "optim.lr=1e30", "trainer.skip_nonfinite=true",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    # after the first step the weights are huge (finite), so the next 7 of 8 batches are skipped, each leaving the
    # model as it was; the model then gives NaN on val, so the run stops before saving (tests/engine/
    # test_hardening.py: with a good epoch before)
    assert "skipped 7 step(s) with a non-finite loss or gradient (1 batch(es) trained)" in out
    assert proc.returncode == 1, out
    assert "after epoch 1 the model gives a non-finite val loss for task 'left'" in proc.stderr
    assert "no checkpoint had been written yet" in proc.stderr
    assert not (run / "checkpoints" / "last.pt").exists() and "Traceback" not in out
