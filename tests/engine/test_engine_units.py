"""Schedulers, checkpoints and RNG state, run records, batch limits, config validation and overrides."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from contracts import compose_config
from mtlrun.overrides import apply_overrides
from mtlrun.validation import validate_train
from mtlrun.engine import checkpoint, schedulers
from mtlrun.engine.evaluate import count_batches
from mtlrun.engine.records import read_metrics_csv, results_table, write_metrics_csv, write_results
from mtlrun.errors import ConfigError, UsageError
from mtlrun.tasks import Classification, Regression


compose_train = compose_config


# ----------------------------------------------------------------------------------------- schedulers


def lrs(factory, steps, **kw):
    """LR in effect for optimizer steps 0..steps (base LR 1, so the LR is the schedule's factor)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = factory(opt, **kw)
    out = []
    for _ in range(steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_warmup_then_decay_to_min_ratio():
    values = lrs(schedulers.cosine, 12, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert values[0] == pytest.approx(0.5)  # linear warm-up: (step + 1) / warmup_steps
    assert values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx(1.0)  # decay starts from the base LR
    # halfway through the decay: min + (1 - min) / 2
    assert values[6] == pytest.approx(0.1 + 0.9 * 0.5)
    assert values[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert values[10] == pytest.approx(0.1)  # at the end of training
    assert values[11] == pytest.approx(0.1) and values[12] == pytest.approx(0.1)  # and stays there
    assert all(a >= b for a, b in zip(values[2:], values[3:]))  # monotone decay


def test_cosine_without_warmup_and_zero_floor():
    values = lrs(schedulers.cosine, 4, total_steps=4)
    assert values == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                    0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])


def test_multistep_factors():
    values = lrs(schedulers.multistep, 100, total_steps=100, milestones=(0.75, 0.5), gamma=0.1)
    assert values[0] == pytest.approx(1.0) and values[49] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.1) and values[74] == pytest.approx(0.1)
    assert values[75] == pytest.approx(0.01) and values[100] == pytest.approx(0.01)
    assert len(set(round(v, 12) for v in values)) == 3


def test_constant_with_and_without_warmup():
    assert lrs(schedulers.constant, 5, total_steps=5) == pytest.approx([1.0] * 6)
    assert lrs(schedulers.constant, 6, total_steps=6, warmup_steps=4) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


def test_scheduler_scales_the_configured_base_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched = schedulers.cosine(opt, total_steps=4, warmup_steps=1, min_lr_ratio=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


# ----------------------------------------------------------------------------------------- checkpoints


def _state(**extra):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return {"mtlrun_version": "0.0.test", "format": checkpoint.FORMAT, "config": {"seed": 0, "trainer": {"x": 1}},
            "model": model.state_dict(), "epoch": 3, "history": [{"epoch": 0, "val/a": 0.5}], **extra}


def test_checkpoint_round_trip(tmp_path):
    state = _state()
    path = tmp_path / "checkpoints" / "last.pt"  # parent created on demand
    checkpoint.save(path, state)
    loaded = checkpoint.load(path)
    assert loaded.keys() == state.keys()
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["config"] == state["config"]
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"]
    # the contract: plain torch.load(weights_only=True) reads it too
    assert torch.load(path, weights_only=True)["mtlrun_version"] == "0.0.test"


def test_checkpoint_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, _state(epoch=1))
    checkpoint.save(path, _state(epoch=2))  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert checkpoint.load(path)["epoch"] == 2
    # a failing write (unpicklable object) leaves the previous file intact and no temp file behind
    with pytest.raises(Exception):
        checkpoint.save(path, _state(epoch=3, bad=lambda: None))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert checkpoint.load(path)["epoch"] == 2


def test_checkpoint_load_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(UsageError) as info:
        checkpoint.load(path)
    assert f"checkpoint={path}" in str(info.value) and "no such file" in str(info.value)
    with pytest.raises(UsageError, match=r"^resume=.*no such file"):
        checkpoint.load(path, key="resume")
    with pytest.raises(UsageError, match="it is a directory"):
        checkpoint.load(tmp_path)


def test_checkpoint_load_corrupt_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UsageError) as info:
        checkpoint.load(path, key="resume")
    message = str(info.value)
    assert message.startswith(f"resume={path}:")
    assert "cannot be read as a checkpoint" in message


def test_checkpoint_load_truncated_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, _state())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UsageError, match="cannot be read as a checkpoint"):
        checkpoint.load(path)


def test_checkpoint_load_foreign_torch_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(UsageError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint={path}:")
    assert "not a mtlrun checkpoint" in message
    assert "missing mtlrun_version, format, config, model" in message
    torch.save(torch.zeros(3), path)  # not even a dict
    with pytest.raises(UsageError, match="not a mtlrun checkpoint"):
        checkpoint.load(path)


def test_checkpoint_from_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    checkpoint.save(path, _state(format=checkpoint.FORMAT + 1))
    with pytest.raises(UsageError, match=f"format {checkpoint.FORMAT + 1}.*Upgrade mtlrun"):
        checkpoint.load(path)


def _draw():
    return (torch.rand(4), torch.randn(2), np.random.rand(3), np.random.randn(3),
            [random.random() for _ in range(3)], random.gauss(0, 1))


def _assert_draws_equal(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])
    assert a[4] == b[4] and a[5] == b[5]


@pytest.mark.parametrize("through_file", [False, True])
def test_rng_state_round_trip(tmp_path, through_file):
    base = _state()  # builds a model: do it before the streams are captured
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    # odd numbers of Gaussian draws: numpy and python each hold a cached second Gaussian now
    np.random.randn()
    random.gauss(0, 1)
    state = checkpoint.rng_state()
    if through_file:  # must survive a weights_only checkpoint
        checkpoint.save(tmp_path / "rng.pt", {**base, "rng": state})
        state = checkpoint.load(tmp_path / "rng.pt")["rng"]
    first = _draw()
    _draw()  # move every stream on
    checkpoint.set_rng_state(state)
    _assert_draws_equal(first, _draw())


# -------------------------------------------------------------------------------------------- records


def test_metrics_csv_round_trip(tmp_path):
    rows = [
        {"epoch": 0, "split": "train", "step": 10, "left/loss": 0.5, "right/loss": 1.25},
        {"epoch": 0, "split": "val", "step": 10, "left/accuracy": 0.75, "left/loss": 0.625,
         "right/macro_f1": 0.123456},
        {"epoch": 1, "split": "val", "step": 20, "left/accuracy": 0.8125, "left/loss": 0.5,
         "right/macro_f1": 0.25},
    ]
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, rows)
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["epoch", "split", "step", "left/accuracy", "left/loss", "right/loss", "right/macro_f1"]
    assert len(path.read_text().splitlines()) == 1 + len(rows)
    back = read_metrics_csv(path)
    assert back == rows  # ints stay ints, empty cells are left out
    assert isinstance(back[0]["epoch"], int) and isinstance(back[0]["step"], int)
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]


def test_metrics_csv_rounds_to_six_significant_digits(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, [{"epoch": 2, "split": "test", "step": 7, "a/mae": 1 / 3, "a/rmse": float("nan")}])
    (row,) = read_metrics_csv(path)
    assert row["a/mae"] == pytest.approx(1 / 3, rel=1e-6)
    assert "a/rmse" not in row  # NaN (nothing measured) is an empty cell, read back as missing
    assert path.read_text().splitlines()[1] == "2,test,7,0.333333,"
    assert (row["epoch"], row["split"], row["step"]) == (2, "test", 7)


def test_write_results_payload(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, {"test/right/accuracy": 0.5, "test/left/accuracy": 1, "val/left/loss": 0.25},
                  best_epoch=3, checkpoint="ckpt/best.pt")
    payload = json.loads(path.read_text())
    assert payload == {"metrics": {"test/left/accuracy": 1.0, "test/right/accuracy": 0.5, "val/left/loss": 0.25},
                       "best_epoch": 3, "checkpoint": "ckpt/best.pt"}
    assert list(payload["metrics"]) == sorted(payload["metrics"])
    assert isinstance(payload["metrics"]["test/left/accuracy"], float)


def test_results_table_lines():
    tasks = {"left": Classification(num_classes=10), "age": Regression(dim=1, auxiliary=True)}
    columns = {"val": {"left/accuracy": 0.9, "left/macro_f1": 0.88, "age/mae": 1.5, "age/rmse": float("nan")},
               "test": {"left/accuracy": 0.85, "left/macro_f1": 0.8, "age/mae": 2.0}}
    lines = results_table(tasks, columns).splitlines()
    assert lines[0].split() == ["task", "metric", "val", "test"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    body = [line.split() for line in lines[2:]]
    assert body == [
        ["left", "accuracy", "↑", "0.9000", "0.8500"],
        ["left", "macro_f1", "↑", "0.8800", "0.8000"],
        ["age", "(aux)", "mae", "↓", "1.5000", "2.0000"],
        ["age", "(aux)", "rmse", "↓", "–", "–"],  # NaN (nothing measured) and absent: missing, not 0
    ]


# ---------------------------------------------------------------------------------------- batch limits


@pytest.mark.parametrize("limit,expected", [(None, 10), (3, 3), (10, 10), (25, 10), (0.5, 5), (0.25, 2),
                                            (0.01, 1), (1.0, 10)])
def test_count_batches(limit, expected):
    assert count_batches(limit, 10) == expected


def test_count_batches_of_an_empty_loader():
    assert count_batches(None, 0) == 0
    assert count_batches(3, 0) == 0
    assert count_batches(0.5, 0) == 0


# ------------------------------------------------------------------------------- validation, overrides


def test_validate_train_accepts_the_default_config():
    validate_train(compose_train())


def test_validate_train_lists_every_problem_at_once():
    cfg = compose_train(["trainer.max_epochs=-1", "data.batch_size=0", "trainer.precision=8",
                         "trainer.limit_train_batches=1.5"])
    with pytest.raises(ConfigError) as info:
        validate_train(cfg)
    problems = info.value.problems
    assert len(problems) == 4
    message = str(info.value)
    assert "4 problem(s)" in message
    for key_value in ("trainer.max_epochs=-1", "data.batch_size=0", "trainer.precision=8",
                      "trainer.limit_train_batches=1.5"):
        assert sum(p.startswith(key_value + ":") for p in problems) == 1, key_value
        assert key_value in message
    by_key = {p.split("=")[0]: p for p in problems}
    assert "integer >= 1" in by_key["trainer.max_epochs"]
    assert "integer >= 1" in by_key["data.batch_size"]
    assert "32, bf16, 16" in by_key["trainer.precision"]
    assert "(0, 1]" in by_key["trainer.limit_train_batches"]
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_validate_train_other_keys():
    cfg = compose_train(["trainer.device=tpu", "trainer.grad_clip=-1", "trainer.monitor_mode=up",
                         "tasks.left.weight=-2", "trainer.limit_eval_batches=0"])
    with pytest.raises(ConfigError) as info:
        validate_train(cfg)
    keys = sorted(p.split("=")[0] for p in info.value.problems)
    assert keys == ["tasks.left.weight", "trainer.device", "trainer.grad_clip", "trainer.limit_eval_batches",
                    "trainer.monitor_mode"]
    validate_train(compose_train(["trainer.device=cuda:1", "trainer.precision=bf16", "trainer.grad_clip=1",
                                  "trainer.limit_train_batches=0.5", "trainer.limit_eval_batches=3"]))


def test_apply_overrides_refuses_a_group_choice():
    base = OmegaConf.to_container(compose_train())
    current = compose_train(["optim=sgd"])
    with pytest.raises(UsageError) as info:
        apply_overrides(base, current, ["optim=sgd"], None, "resume")
    message = str(info.value)
    assert message.startswith("optim=sgd:")
    assert "resume keeps the checkpoint's 'optim' choice" in message


def test_apply_overrides_applies_values_and_keeps_the_rest():
    base = OmegaConf.to_container(compose_train(["trainer.max_epochs=2", "optim=sgd"]))
    overrides = ["trainer.max_epochs=5", "trainer.early_stopping.patience=3", "resume=/x/last.pt",
                 "hydra.run.dir=/tmp/somewhere"]
    current = compose_train(["trainer.max_epochs=5", "trainer.early_stopping.patience=3", "resume=/x/last.pt"])
    cfg = apply_overrides(base, current, overrides, None, "resume")
    assert cfg.trainer.max_epochs == 5
    assert cfg.trainer.early_stopping.patience == 3
    assert cfg.resume is None  # resume= itself is not copied into the checkpoint's config
    assert cfg.optim._target_ == "torch.optim.SGD"  # the checkpoint's choice, not the default adamw
    expected = OmegaConf.create(base)
    expected.trainer.max_epochs = 5
    expected.trainer.early_stopping.patience = 3
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected)


def test_apply_overrides_allowed_prefixes():
    base = OmegaConf.to_container(compose_train())
    current = compose_train(["seed=3", "data.batch_size=7"])
    cfg = apply_overrides(base, current, ["data.batch_size=7"], ("data.", "trainer."), "eval")
    assert cfg.data.batch_size == 7
    with pytest.raises(UsageError, match=r"^seed=3: eval accepts overrides of data\., trainer\. only"):
        apply_overrides(base, current, ["seed=3"], ("data.", "trainer."), "eval")


# ------------------------------------------------------------------------------------- channels_last
def test_channels_last_puts_the_model_and_image_batches_in_channels_last(tmp_path):
    from mtlrun.build import build_trainer
    from mtlrun.distributed import DistInfo

    cfg = compose_config(["experiment=scenes_hps", "data.n_train=8", "data.n_val=4", "data.n_test=4", "data.batch_size=4",
                          "data.image_size=16", "trainer.device=cpu", "trainer.channels_last=true"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    convs = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]["image"]))
    batch = next(iter(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)))
    assert not batch["inputs"]["image"].is_contiguous(memory_format=torch.channels_last)  # [B, 3, H, W] as loaded
    trainer.step([batch])
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
    trainer.evaluate("val")  # evaluation feeds the same layout
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
