"""Where commands write (issue 21, cases 2-4 and 8), in-process: a run dir never takes another command's
records, an export folder holds one model, a write failure is one `<path>: cannot write there: <reason>` line
(exit 1) that no temp-file cleanup hides, and a command's own options are checked with its config.

Read-only and full file systems are simulated by patching the calls that write (the suite may run as root,
whom permissions do not stop); tests/cli/test_hostile_inputs.py meets the real ones through the CLI."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtlrun.engine import checkpoint, records, rundir
from mtlrun.inference import portable
from mtlrun.errors import RunDirRefused, UsageError, WriteError

EROFS = OSError(errno.EROFS, os.strerror(errno.EROFS))
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refuse(*args, **kwargs):
    raise OSError(EROFS.errno, EROFS.strerror)


# -------------------------------------------------------------------------------------- write failures
def test_a_failed_atomic_write_says_why_not_that_the_cleanup_failed(tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text("earlier")
    # on a read-only mount the write fails, and so does the unlink of the temp file, even of a missing one
    monkeypatch.setattr(Path, "write_bytes", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(WriteError) as caught:
        records.atomic_write_text(tmp_path / "results.json", "new")
    assert str(caught.value) == (f"{tmp_path / 'results.json'}: cannot write there: Read-only file system; the "
                                 f"previous results.json is intact")
    assert caught.value.exit_code == 1
    monkeypatch.undo()
    assert (tmp_path / "results.json").read_text() == "earlier"


def test_a_failed_checkpoint_save_says_why_not_that_the_cleanup_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "unlink", refuse)
    monkeypatch.setattr(checkpoint, "open", refuse, raising=False)
    with pytest.raises(WriteError, match=r"last\.pt: cannot write there: Read-only file system$"):
        checkpoint.save(tmp_path / "last.pt", {"epoch": 1})


@pytest.mark.parametrize("error", [EROFS, ENOSPC], ids=["read_only", "full"])
def test_a_folder_that_takes_no_file_is_refused_before_any_work_and_left_as_it_was(tmp_path, monkeypatch, error):
    class Refusing:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            if error is EROFS:
                raise OSError(error.errno, error.strerror)
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(error.errno, error.strerror)

    monkeypatch.setattr(records, "open", Refusing, raising=False)
    with pytest.raises(WriteError) as caught:
        records.writable_folder(tmp_path / "new" / "out")
    assert str(caught.value) == f"{tmp_path / 'new' / 'out'}: cannot write there: {error.strerror}"
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone again
    monkeypatch.undo()
    assert records.writable_folder(tmp_path / "out") == tmp_path / "out" and list((tmp_path / "out").iterdir()) == []


def test_a_file_in_the_way_of_an_output_folder_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    assert records.file_in_the_way("output", tmp_path / "f") == f"output={tmp_path / 'f'}: is a file, not a folder"
    assert records.file_in_the_way("output", tmp_path / "f" / "sub") == \
        f"output={tmp_path / 'f' / 'sub'}: {tmp_path / 'f'} is a file, not a folder"
    assert records.file_in_the_way("output", tmp_path / "new" / "sub") is None


def test_export_writes_that_fail_are_write_errors(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):  # what safetensors raises: its OS error only as text
        raise Exception('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(WriteError, match=r"model\.safetensors: cannot write there: No space left on device$"):
        portable.write_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
    wrapper = portable.PositionalModel(_Model(), ["x"], ["a"])
    with pytest.raises(WriteError, match=r"model\.ts: cannot write there: No such file or directory$"):
        portable.to_torchscript(wrapper, (torch.randn(2, 3),), tmp_path / "gone" / "model.ts")
    with pytest.raises(WriteError, match=r"model\.pt2: cannot write there: No such file or directory$"):
        portable.to_pt2(wrapper, (torch.randn(2, 3),), tmp_path / "gone" / "model.pt2")


class _Model(torch.nn.Module):
    def forward(self, inputs, modality_mask=None):
        return {"a": inputs["x"] * 2}


# --------------------------------------------------------------------------- whose records a dir holds
def _train_run(folder: Path, marker: bool = True) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"weights")
    (folder / "results.json").write_text('{"metrics": {}, "best_epoch": 2}')
    if marker:
        (folder / rundir.MARKER).write_text("train\n")
    return folder


@pytest.mark.parametrize("marker", [True, False], ids=["marked", "from_before_the_marker"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "affinity"])
def test_another_command_never_writes_into_a_train_run_dir(tmp_path, marker, command):
    run = _train_run(tmp_path / "run", marker)
    before = snapshot(run)
    with pytest.raises(RunDirRefused) as caught:
        rundir.acquire(run, command)
    assert str(caught.value) == (f"hydra.run.dir={run}: holds the records of a `mtlrun train` run, which "
                                 f"`mtlrun {command}` would overwrite; choose another hydra.run.dir")
    assert caught.value.exit_code == 2 and snapshot(run) == before and not (run / rundir.LOCK_NAME).exists()


@pytest.mark.parametrize("records, owner", [("export.json", "export"), ("affinity.json", "affinity"),
                                            ("results.json", "eval"), ("predictions.csv", "predict")])
def test_each_commands_records_name_their_command(tmp_path, records, owner):
    (tmp_path / records).write_text("{}")
    assert rundir.owner(tmp_path) == owner
    assert "which `mtlrun train` would overwrite" in rundir.refusal(tmp_path, "train")


def test_train_takes_its_own_dir_again_only_to_resume_it(tmp_path):
    run = _train_run(tmp_path / "run")
    with pytest.raises(RunDirRefused, match=r"holds the records of an earlier `mtlrun train` run \(checkpoints/last"
                                            r"\.pt, results\.json\).*continue it with resume=.*last\.pt"):
        rundir.acquire(run, "train")
    assert rundir.resumes_in(run, str(run / "checkpoints" / "last.pt"))
    with rundir.locked(run, "train", resumes=True):
        pass
    assert not rundir.resumes_in(run, str(tmp_path / "other" / "last.pt")) and not rundir.resumes_in(run, None)


def test_a_run_dir_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RunDirRefused) as caught:
        rundir.acquire(tmp_path / "run", "eval")
    assert str(caught.value) == f"hydra.run.dir={tmp_path / 'run'}: is a file, not a folder"
    assert caught.value.exit_code == 2 and (tmp_path / "run").read_text() == "not a folder"


def test_a_new_run_dir_is_marked_with_its_command_and_a_failed_start_does_not_lock_it_out(tmp_path):
    with rundir.locked(tmp_path / "ev", "eval"):
        pass
    assert (tmp_path / "ev" / rundir.MARKER).read_text() == "eval\n"
    with rundir.locked(tmp_path / "ev", "eval"):  # the same command again: a run that failed to start, retried
        pass
    with pytest.raises(RunDirRefused, match="holds the records of a `mtlrun eval` run"):
        rundir.acquire(tmp_path / "ev", "train")


def test_a_sweep_into_a_folder_of_another_commands_jobs_is_refused_before_hydra_writes(tmp_path):
    _train_run(tmp_path / "sweep" / "1")
    assert rundir.sweep_refusal(tmp_path / "sweep", "eval") == (
        f"hydra.sweep.dir={tmp_path / 'sweep'}: its job dir 1: holds the records of a `mtlrun train` run, which "
        f"`mtlrun eval` would overwrite; choose another hydra.sweep.dir")
    assert rundir.sweep_refusal(tmp_path / "new", "eval") is None


def test_a_refused_sweep_job_leaves_no_error_record_in_the_other_runs_dir(tmp_path, monkeypatch, capsys):
    from hydra.core.hydra_config import HydraConfig

    from mtlrun import sweep

    job_dir = _train_run(tmp_path / "0")
    (job_dir / sweep.ERROR_FILE).write_text('{"error": "its own failure"}')
    before = snapshot(job_dir)
    hydra_cfg = OmegaConf.create({"job": {"num": 0}, "runtime": {"output_dir": str(job_dir)},
                                  "overrides": {"task": ["seed=1"]}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))

    def refused(cfg):
        raise RunDirRefused(f"job dir {job_dir}: holds the records of a `mtlrun train` run")

    result = sweep.run_job(refused, None)
    sweep._outcomes.clear()
    assert isinstance(result, sweep.NoResult) and snapshot(job_dir) == before
    assert "error: job 0 failed: job dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the commands' own options
def test_export_options_and_folder_are_listed_as_config_problems(tmp_path):
    from mtlrun.export import option_problems

    (tmp_path / "old").mkdir()
    for name in ("model.safetensors", "config.yaml", "export.json", "notes.txt"):  # the user's notes may stay
        (tmp_path / "old" / name).write_text("A's")
    cfg = OmegaConf.create({"format": "tflite", "tolerance": float("nan"), "output": str(tmp_path / "old")})
    assert option_problems(cfg) == [
        "format=tflite: valid: weights, pt2, torchscript, onnx",
        "tolerance=nan: a finite number >= 0 (the largest abs difference accepted)",
        f"output={tmp_path / 'old'}: holds config.yaml, export.json, model.safetensors; an export folder describes "
        f"one model: choose a folder without these (export each format into a folder of its own)"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("the user's")
    assert option_problems(OmegaConf.create({"format": "onnx", "tolerance": 0, "output": str(tmp_path / "notes")})) \
        == []
    for tolerance in (-1, "abc", True, float("inf")):
        assert option_problems(OmegaConf.create({"format": "onnx", "tolerance": tolerance,
                                                 "output": str(tmp_path / "new")})) == \
            [f"tolerance={tolerance}: a finite number >= 0 (the largest abs difference accepted)"]
    assert option_problems(OmegaConf.create({"format": "onnx", "tolerance": 0, "output": str(tmp_path / "new")})) == []


def test_predict_output_may_hold_earlier_predictions_but_no_other_commands_records(tmp_path):
    from mtlrun.predict import output_problems

    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "predictions.csv").write_text("id\n")
    (tmp_path / "file").write_text("")
    assert output_problems(OmegaConf.create({"output": str(tmp_path / "preds")})) == []
    assert output_problems(OmegaConf.create({"output": str(tmp_path / "file")})) == \
        [f"output={tmp_path / 'file'}: is a file, not a folder"]
    run = _train_run(tmp_path / "run")
    assert output_problems(OmegaConf.create({"output": str(run)})) == \
        [f"output={run}: holds the records of a `mtlrun train` run; predictions go into a folder of their own: "
         f"choose another output"]


def test_options_are_listed_with_the_configs_problems(monkeypatch):
    from mtlrun import validation
    from mtlrun.errors import ConfigError

    monkeypatch.setattr(validation, "config_problems", lambda cfg, from_checkpoint: ["data.batch_size=0: >= 1"])
    with pytest.raises(ConfigError) as caught:
        validation.validate_eval(OmegaConf.create({}), ("data.batch_size",), ["tolerance=nan: a finite number"])
    assert str(caught.value) == ("invalid config (2 problem(s)):\n  - tolerance=nan: a finite number\n"
                                 "  - data.batch_size=0: >= 1")
    assert isinstance(caught.value, UsageError) and json.dumps(caught.value.problems)
