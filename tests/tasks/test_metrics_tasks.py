"""Per-task metrics against hand-computed values and scikit-learn; task losses against torch references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from mtlrun.data.base import TargetInfo
from mtlrun.errors import UsageError
from mtlrun.metrics import ClassificationMetrics, MultilabelMetrics, RegressionMetrics
from mtlrun.tasks import Binary, Classification, Multilabel, Regression

CPU = torch.device("cpu")


def one_hot_logits(pred_labels, num_classes):
    return F.one_hot(torch.as_tensor(pred_labels), num_classes).float() * 3.0 - 1.0


def run_metrics(metrics, batches):
    metrics.reset(CPU)
    for pred, target, mask in batches:
        metrics.update(pred, target, mask)
    return metrics.compute()


# ---------------------------------------------------------------------------------- classification


def test_classification_metrics_small_confusion_by_hand():
    target = [0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 1, 1, 1, 2, 0, 2]
    # per class: tp, number of true samples (support), number predicted
    f1s = []
    for c in range(3):
        tp = sum(t == c and p == c for t, p in zip(target, predicted))
        support, npred = target.count(c), predicted.count(c)
        precision, recall = tp / npred, tp / support
        f1s.append(2 * precision * recall / (precision + recall))
    assert f1s == pytest.approx([0.5, 0.8, 0.8])
    out = run_metrics(ClassificationMetrics(3), [(one_hot_logits(predicted, 3), torch.tensor(target), None)])
    assert out["accuracy"] == pytest.approx(5 / 7)
    assert out["macro_f1"] == pytest.approx(sum(f1s) / 3)
    assert out["macro_f1"] == pytest.approx(0.7)


def test_classification_metrics_accumulate_over_batches_and_ignore_masked():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = one_hot_logits([0, 1, 1, 1, 2, 0, 2], 3)
    whole = run_metrics(ClassificationMetrics(3), [(pred, target, None)])
    # same samples in two batches, plus wrong predictions on unlabelled samples that must not count
    extra_pred, extra_target = one_hot_logits([1, 2, 0], 3), torch.tensor([0, 0, 1])
    batches = [
        (torch.cat([pred[:3], extra_pred]), torch.cat([target[:3], extra_target]),
         torch.tensor([True] * 3 + [False] * 3)),
        (pred[3:], target[3:], torch.ones(4, dtype=torch.bool)),
    ]
    masked = run_metrics(ClassificationMetrics(3), batches)
    assert masked == pytest.approx(whole)


def test_classification_metrics_absent_class_does_not_dilute_macro_f1():
    # class 3 neither occurs nor is predicted: macro-F1 averages over classes 0..2 only, as sklearn does
    target, predicted = [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]
    out = run_metrics(ClassificationMetrics(4), [(one_hot_logits(predicted, 4), torch.tensor(target), None)])
    assert out["macro_f1"] == pytest.approx(0.7)
    assert out["macro_f1"] == pytest.approx(f1_score(target, predicted, average="macro"))


def test_classification_metrics_match_sklearn_on_random_data():
    g = torch.Generator().manual_seed(0)
    n, c = 300, 6
    logits = torch.randn(n, c, generator=g)
    target = torch.randint(0, c, (n,), generator=g)
    target[:100] = logits[:100].argmax(1)  # some signal, so F1s are not all tiny
    mask = torch.rand(n, generator=g) > 0.3
    out = run_metrics(ClassificationMetrics(c), [(logits[:150], target[:150], mask[:150]),
                                                 (logits[150:], target[150:], mask[150:])])
    y, p = target[mask].numpy(), logits[mask].argmax(1).numpy()
    assert out["accuracy"] == pytest.approx(float((y == p).mean()))
    assert out["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_classification_metrics_all_masked_are_missing_not_zero():
    out = run_metrics(ClassificationMetrics(3), [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]),
                                                  torch.zeros(4, dtype=torch.bool))])
    assert set(out) == {"accuracy", "macro_f1"} and all(math.isnan(v) for v in out.values())


# -------------------------------------------------------------------------------- binary / multilabel


def test_multilabel_metrics_match_numpy_and_sklearn():
    g = torch.Generator().manual_seed(1)
    n, labels = 200, 5
    logits = torch.randn(n, labels, generator=g)
    target = (torch.rand(n, labels, generator=g) < 0.4).float()
    mask = torch.rand(n, generator=g) > 0.25
    out = run_metrics(MultilabelMetrics(labels), [(logits[:80], target[:80], mask[:80]),
                                                  (logits[80:], target[80:], mask[80:])])
    p = (logits[mask] >= 0).numpy().astype(int)  # sigmoid(x) >= 0.5 <=> x >= 0
    t = target[mask].numpy().astype(int)
    assert out["accuracy"] == pytest.approx(float((p == t).mean()))
    assert out["f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))


def test_multilabel_metrics_by_hand():
    # label 0: tp=1 fp=1 fn=0 tn=1 -> F1 = 2/3; label 1: tp=0 fp=0 fn=1 tn=2 -> F1 = 0
    logits = torch.tensor([[2.0, -1.0], [1.0, -1.0], [-1.0, -1.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    out = run_metrics(MultilabelMetrics(2), [(logits, target, None)])
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_binary_metrics_with_1d_target_and_mask():
    logits = torch.tensor([[1.0], [-2.0], [0.5], [-0.5], [3.0]])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([True, True, True, True, False])
    out = run_metrics(MultilabelMetrics(1), [(logits, target, mask)])
    # labelled: predictions 1,0,1,0 vs targets 1,0,0,1 -> tp=1 fp=1 fn=1 tn=1
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


# ----------------------------------------------------------------------------------------- regression


@pytest.mark.parametrize("dim", [1, 3])
def test_regression_metrics_match_numpy_with_mask(dim):
    g = torch.Generator().manual_seed(2)
    n = 50
    pred = torch.randn(n, dim, generator=g)
    target = torch.randn(n, dim, generator=g) if dim > 1 else torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.4
    pred_masked = pred.clone()
    pred_masked[~mask] = 1e6  # huge errors on unlabelled samples must not leak in
    out = run_metrics(RegressionMetrics(dim), [(pred_masked[:20], target[:20], mask[:20]),
                                               (pred_masked[20:], target[20:], mask[20:])])
    err = (pred.numpy().reshape(n, -1) - target.numpy().reshape(n, -1))[mask.numpy()]
    assert out["mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-6)
    assert out["rmse"] == pytest.approx(float(np.sqrt((err ** 2).mean())), rel=1e-6)
    unmasked = run_metrics(RegressionMetrics(dim), [(pred, target, None)])
    err_all = pred.numpy().reshape(n, -1) - target.numpy().reshape(n, -1)
    assert unmasked["mae"] == pytest.approx(float(np.abs(err_all).mean()), rel=1e-6)
    assert unmasked["rmse"] == pytest.approx(float(np.sqrt((err_all ** 2).mean())), rel=1e-6)


def test_regression_metrics_by_hand():
    out = run_metrics(RegressionMetrics(1), [(torch.tensor([[1.0], [2.0], [5.0]]), torch.tensor([0.0, 4.0, 5.0]),
                                              None)])
    assert out["mae"] == pytest.approx(1.0)  # (1 + 2 + 0) / 3
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))


# ------------------------------------------------------------------------------------ task losses


def _grad_of(task, pred, target, mask):
    pred = pred.clone().requires_grad_(True)
    loss = task.loss(pred, target, mask)
    loss.backward()
    return loss, pred.grad


def test_classification_loss_equals_cross_entropy():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    task = Classification(num_classes=5)
    torch.testing.assert_close(task.loss(pred, target, None), F.cross_entropy(pred, target))
    smooth = Classification(num_classes=5, label_smoothing=0.1)
    torch.testing.assert_close(smooth.loss(pred, target, None), F.cross_entropy(pred, target, label_smoothing=0.1))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_classification_loss_with_mask_uses_labelled_samples_only(label_smoothing):
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    mask = torch.tensor([True, False, True, True, False, False, True, True])
    target_with_junk = torch.where(mask, target, -1)  # unlabelled samples may carry any placeholder
    task = Classification(num_classes=5, label_smoothing=label_smoothing)
    loss, grad = _grad_of(task, pred, target_with_junk, mask)
    expected = F.cross_entropy(pred[mask], target[mask], label_smoothing=label_smoothing)
    torch.testing.assert_close(loss, expected)
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask].abs().sum(1) > 0)


def test_task_loss_with_no_labelled_samples_is_zero_and_has_zero_grad():
    g = torch.Generator().manual_seed(5)
    none = torch.zeros(6, dtype=torch.bool)
    cases = [
        (Classification(num_classes=4), torch.randn(6, 4, generator=g), torch.full((6,), -100)),
        (Binary(), torch.randn(6, 1, generator=g), torch.ones(6)),
        (Multilabel(num_labels=3), torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g).round()),
        (Regression(dim=2), torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)),
        (Regression(dim=2, loss="l1"), torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)),
    ]
    for task, pred, target in cases:
        loss, grad = _grad_of(task, pred, target, none)
        assert loss.item() == 0.0, type(task).__name__
        assert not torch.isnan(loss)
        assert torch.equal(grad, torch.zeros_like(grad)), type(task).__name__


# NaN is the usual placeholder for a missing float label: it must not leak through the mask.


@pytest.mark.parametrize("task", [Regression(dim=2), Regression(dim=2, loss="l1"), Multilabel(num_labels=2)],
                         ids=["regression-mse", "regression-l1", "multilabel"])
def test_float_loss_ignores_nan_placeholder_on_unlabelled_samples(task):
    # NaN is the usual "missing" marker for float targets (pandas, CSV); the mask says the label is absent.
    g = torch.Generator().manual_seed(9)
    pred = torch.randn(4, 2, generator=g)
    target = (torch.rand(4, 2, generator=g) > 0.5).float()
    mask = torch.tensor([True, False, True, False])
    target_nan = torch.where(mask.view(-1, 1), target, torch.full_like(target, float("nan")))
    loss, grad = _grad_of(task, pred, target_nan, mask)
    torch.testing.assert_close(loss, task.loss(pred[mask], target[mask], None))
    assert torch.isfinite(grad).all()
    assert torch.all(grad[~mask] == 0)


def test_regression_metrics_ignore_nan_placeholder_on_unlabelled_samples():
    pred = torch.tensor([[1.0], [2.0], [5.0]])
    target = torch.tensor([0.0, float("nan"), 5.0])
    out = run_metrics(RegressionMetrics(1), [(pred, target, torch.tensor([True, False, True]))])
    assert out["mae"] == pytest.approx(0.5)
    assert out["rmse"] == pytest.approx(math.sqrt(0.5))


def test_binary_loss_equals_bce_with_logits():
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(10, 1, generator=g), (torch.rand(10, generator=g) > 0.5).float()
    task = Binary()
    assert task.output_dim == 1
    torch.testing.assert_close(task.loss(pred, target, None),
                               F.binary_cross_entropy_with_logits(pred.squeeze(1), target))
    mask = torch.tensor([True, False] * 5)
    torch.testing.assert_close(task.loss(pred, target, mask),
                               F.binary_cross_entropy_with_logits(pred.squeeze(1)[mask], target[mask]))
    weighted = Binary(pos_weight=3.0)
    torch.testing.assert_close(weighted.loss(pred, target, mask),
                               F.binary_cross_entropy_with_logits(pred.squeeze(1)[mask], target[mask],
                                                                  pos_weight=torch.tensor(3.0)))


@pytest.mark.parametrize("case", ["pos_weight", "soft_targets"])
def test_multilabel_loss_on_bf16_predictions_keeps_fp32_targets_and_pos_weight(case):
    g = torch.Generator().manual_seed(10)
    pred = torch.randn(16, 3, generator=g).bfloat16()  # what a head returns under bf16 autocast
    if case == "pos_weight":
        task, pos_weight = Multilabel(num_labels=3, pos_weight=0.3), torch.tensor(0.3)
        target = (torch.rand(16, 3, generator=g) > 0.5).float()
    else:
        task, pos_weight = Multilabel(num_labels=3), None
        target = torch.rand(16, 3, generator=g)  # soft labels
    expected = F.binary_cross_entropy_with_logits(pred.float(), target, pos_weight=pos_weight)
    torch.testing.assert_close(task.loss(pred, target, None), expected, rtol=1e-6, atol=1e-7)


def test_multilabel_loss_equals_bce_with_logits_and_mask():
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(9, 4, generator=g), (torch.rand(9, 4, generator=g) > 0.5).float()
    task = Multilabel(num_labels=4)
    torch.testing.assert_close(task.loss(pred, target, None), F.binary_cross_entropy_with_logits(pred, target))
    mask = torch.tensor([True, True, False, True, False, True, True, False, True])
    loss, grad = _grad_of(task, pred, target, mask)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(pred[mask], target[mask]))
    assert torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("name,fn", [("mse", F.mse_loss), ("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)])
def test_regression_losses_match_torch_with_mask(name, fn):
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    task = Regression(dim=3, loss=name)
    torch.testing.assert_close(task.loss(pred, target, None), fn(pred, target))
    mask = torch.tensor([False, True, True, False, True, True, False])
    target_junk = torch.where(mask.view(-1, 1), target, torch.full_like(target, 1e4))
    loss, grad = _grad_of(task, pred, target_junk, mask)
    torch.testing.assert_close(loss, fn(pred[mask], target[mask]))
    assert torch.all(grad[~mask] == 0)
    # dim 1 with a [B] target
    one = Regression(dim=1, loss=name)
    torch.testing.assert_close(one.loss(pred[:, :1], target[:, 0], None), fn(pred[:, 0], target[:, 0]))


def test_regression_unknown_loss_is_a_usage_error_listing_valid_names():
    with pytest.raises(UsageError) as info:
        Regression(dim=1, loss="huber")
    message = str(info.value)
    assert "'huber'" in message
    for valid in ("mse", "l1", "smooth_l1"):
        assert valid in message


# ------------------------------------------------------------------------------ check() and directions


def _named(task, name):
    task.name = name
    return task


def test_check_matching_targets_has_no_problems():
    assert _named(Classification(10), "left").check(TargetInfo("classification", num_classes=10)) == []
    assert _named(Multilabel(3), "tags").check(TargetInfo("multilabel", dim=3)) == []
    assert _named(Binary(), "flag").check(TargetInfo("binary")) == []
    assert _named(Regression(dim=2), "xy").check(TargetInfo("regression", dim=2)) == []
    assert _named(Regression(dim=2), "xy").check(TargetInfo("regression")) == []


def test_check_class_count_mismatch_names_the_key():
    problems = _named(Classification(num_classes=5), "left").check(TargetInfo("classification", num_classes=10))
    assert len(problems) == 1
    assert "tasks.left.num_classes" in problems[0]
    assert "tasks.left.num_classes=10" in problems[0]  # the fix
    assert "5" in problems[0]


def test_check_kind_mismatch():
    problems = _named(Classification(num_classes=10), "left").check(TargetInfo("regression", dim=1))
    assert len(problems) == 1
    assert "tasks.left" in problems[0]
    assert "classification task" in problems[0] and "regression" in problems[0]
    problems = _named(Regression(dim=1), "age").check(TargetInfo("classification", num_classes=3))
    assert len(problems) == 1 and "regression task" in problems[0] and "classification" in problems[0]


def test_check_label_and_dim_mismatch():
    problems = _named(Multilabel(num_labels=3), "tags").check(TargetInfo("multilabel", dim=4))
    assert len(problems) == 1 and "tasks.tags.num_labels=3" in problems[0] and "4" in problems[0]
    problems = _named(Regression(dim=2), "xy").check(TargetInfo("regression", dim=3))
    assert len(problems) == 1 and "tasks.xy.dim=2" in problems[0] and "3" in problems[0]


def test_metric_names_and_directions():
    assert Classification(3).metric_names == ("accuracy", "macro_f1")
    assert Classification(3).higher_is_better == {"accuracy": True, "macro_f1": True}
    assert Multilabel(2).higher_is_better == {"accuracy": True, "f1": True}
    assert Binary().higher_is_better == {"accuracy": True, "f1": True}
    assert Regression().metric_names == ("mae", "rmse")
    assert Regression().higher_is_better == {"mae": False, "rmse": False}


def test_task_weight_and_output_dims():
    t = Classification(num_classes=7, weight=0.5, auxiliary=True)
    assert (t.output_dim, t.weight, t.auxiliary) == (7, 0.5, True)
    assert Multilabel(num_labels=4).output_dim == 4
    assert Regression(dim=3).output_dim == 3
