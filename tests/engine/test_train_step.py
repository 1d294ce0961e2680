"""What one training step leaves behind: the train row's running sums (a task without a label in a batch is
no measurement) and, for a step that `trainer.skip_nonfinite` skips, a model exactly as it was."""

from __future__ import annotations

import math

import torch

from contracts import SGD_64, compose_config
from mtlrun.build import build_trainer
from mtlrun.distributed import DistInfo
from mtlrun.engine.finite import BufferGuard
from mtlrun.engine.train_sums import from_checkpoint, labelled_tasks, train_means


def test_a_task_loss_is_the_mean_over_the_micro_batches_that_had_a_label_for_it():
    # 4 micro-batches: a labelled in all, b in 2, c in none (its summed loss is 0: nothing measured)
    sums = torch.tensor([2.6, 1.0, 0.0, 4.0, 4.0, 4.0, 9.1, 0.3, 4.0, 2.0, 0.0])
    means = train_means(["a", "b", "c"], sums, 4)
    assert means["a/loss"] == (sums[0] / 4).item()  # the division the row always used, bit for bit
    assert means["b/loss"] == (sums[1] / 2).item()
    assert math.isnan(means["c/loss"])
    assert [means[f"{t}/weight"] for t in "abc"] == [1.0, 1.0, 1.0]  # weights: over every micro-batch
    assert means["objective"] == (sums[6] / 4).item() and means["regularizer"] == (sums[7] / 4).item()


def test_which_tasks_a_batch_has_labels_for():
    ones = torch.ones(3)
    assert labelled_tasks({"targets": {}}, ["a", "b", "c"], ones) is ones  # no label_mask: all labelled
    batch = {"label_mask": {"b": torch.tensor([False, False]), "c": torch.tensor([False, True])}}
    assert labelled_tasks(batch, ["a", "b", "c"], ones).tolist() == [1.0, 0.0, 1.0]


def test_a_checkpoint_from_before_the_label_counts_counted_every_micro_batch():
    old = torch.arange(6.0)  # 2 tasks: losses, weights, objective, regularizer
    assert from_checkpoint(old, 2, 5).tolist() == [0, 1, 2, 3, 4, 5, 5, 5]
    current = torch.arange(8.0)
    assert from_checkpoint(current, 2, 5) is current


def _state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_skipped_step_leaves_every_parameter_and_buffer_bit_identical(tmp_path):
    cfg = compose_config([*SGD_64, "data.batch_size=32", "trainer.skip_nonfinite=true"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    batch = next(iter(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)))
    trainer.step([batch])  # a good step first: running statistics and momentum that are not the initial ones
    before = _state(trainer)
    assert any("running_var" in k for k in before)  # BatchNorm: its forward updates these
    poisoned = {**batch, "inputs": {m: torch.full_like(x, math.nan) for m, x in batch["inputs"].items()}}
    trainer.step([poisoned])
    assert trainer.skipped_steps == 1
    after = _state(trainer)
    assert all(torch.equal(after[k], before[k]) for k in before), [k for k in before if not torch.equal(after[k],
                                                                                                        before[k])]
    trainer.step([batch])  # and training goes on from there
    assert all(torch.isfinite(v).all() for v in _state(trainer).values() if v.is_floating_point())


def test_a_skipped_window_restores_the_buffers_of_its_first_micro_batch():
    bn = torch.nn.BatchNorm1d(3)
    guard = BufferGuard(bn, accumulate=2)
    start = {k: v.clone() for k, v in bn.state_dict().items()}
    guard.save(window_starts=True)
    bn(torch.randn(4, 3))
    middle = {k: v.clone() for k, v in bn.state_dict().items()}
    guard.save(window_starts=False)
    bn(torch.randn(4, 3))
    guard.restore_step()  # the micro-batch alone
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in middle.items())
    bn(torch.randn(4, 3))
    guard.restore_window()  # the whole window
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in start.items())


def test_a_model_whose_val_loss_is_non_finite_stops_a_skip_nonfinite_run():
    import pytest

    from mtlrun.engine.finite import check_outputs_finite
    from mtlrun.errors import NonFiniteLossError

    missing = {"a/loss": 0.3, "a/accuracy": 0.9, "b/loss": math.nan, "b/accuracy": math.nan}  # b: no val label
    check_outputs_finite(missing, ["a", "b"], 1, None)
    broken = {"a/loss": math.inf, "a/accuracy": 0.1, "b/loss": math.nan, "b/accuracy": math.nan}
    with pytest.raises(NonFiniteLossError, match=r"^after epoch 2 the model gives a non-finite val loss for task "
                                                 r"'a' .* nothing was saved, last\.pt is the last good checkpoint"):
        check_outputs_finite(broken, ["a", "b"], 2, "last.pt")


def test_a_first_step_the_fp16_scaler_skips_advances_the_schedule_without_torchs_order_warning(tmp_path):
    import warnings

    cfg = compose_config([*SGD_64, "data.batch_size=32", "trainer.precision=16", "scheduler=cosine"])
    trainer = build_trainer(cfg, tmp_path, dist=DistInfo())
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # float16 gradients overflow at this scale
    batch = next(iter(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)))
    before = _state(trainer)
    lr = trainer.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.step([batch])
    assert trainer.scaler.get_scale() < 2.0**40  # the scaler did skip it
    assert all(torch.equal(v, before[k]) for k, v in _state(trainer).items() if k.endswith("weight"))
    assert trainer.global_step == 1 and trainer.optimizer.param_groups[0]["lr"] < lr  # the schedule moved on
    assert not [str(w.message) for w in caught if "lr_scheduler" in str(w.message)]
