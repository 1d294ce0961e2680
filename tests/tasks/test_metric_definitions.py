"""Each definition written down in docs/metrics.md, against scikit-learn or a float64 numpy reference on random
data with masks, absent classes and several batches; and the edge cases the page documents (nothing
measured -> NaN, an ignore_index inside the class range, float64 normals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, mean_absolute_error, root_mean_squared_error

from mtlrun.metrics import (
    ClassificationMetrics,
    DepthMetrics,
    MultilabelMetrics,
    NormalsMetrics,
    RegressionMetrics,
    SegmentationMetrics,
)
from mtlrun.tasks import Segmentation

CPU = torch.device("cpu")


def run_in_batches(metrics, pred, target, mask=None, parts=3):
    """Update over `parts` unequal batches: every definition is pooled over the split, not per batch."""
    metrics.reset(CPU)
    n = len(pred)
    cuts = [0, n // 5, n // 2, n][: parts + 1] if parts == 3 else [0, n]
    for a, b in zip(cuts, cuts[1:]):
        metrics.update(pred[a:b], target[a:b], None if mask is None else mask[a:b])
    return metrics.compute()


# ---------------------------------------------------------------------------------- nothing measured


def _all_unlabelled_cases():
    none = torch.zeros(4, dtype=torch.bool)
    yield ClassificationMetrics(3), torch.randn(4, 3), torch.full((4,), -1), none
    yield MultilabelMetrics(2), torch.randn(4, 2), torch.full((4, 2), float("nan")), none
    yield MultilabelMetrics(1), torch.randn(4, 1), torch.full((4,), float("nan")), none
    yield RegressionMetrics(2), torch.randn(4, 2), torch.full((4, 2), float("nan")), none
    yield SegmentationMetrics(3), torch.randn(4, 3, 2, 2), torch.full((4, 2, 2), -1), none
    yield DepthMetrics(), torch.rand(4, 1, 2, 2), torch.full((4, 1, 2, 2), float("nan")), none
    yield NormalsMetrics(), torch.randn(4, 3, 2, 2), torch.full((4, 3, 2, 2), float("nan")), none
    # labelled samples, but no valid pixel: as missing as no sample
    yield SegmentationMetrics(3), torch.randn(4, 3, 2, 2), torch.full((4, 2, 2), -1), None
    yield DepthMetrics(), torch.rand(4, 1, 2, 2), torch.zeros(4, 1, 2, 2), None
    yield NormalsMetrics(), torch.randn(4, 3, 2, 2), torch.zeros(4, 3, 2, 2), None


@pytest.mark.parametrize("case", list(_all_unlabelled_cases()), ids=lambda c: type(c[0]).__name__)
def test_nothing_measured_gives_nan_for_every_metric_never_zero(case):
    metrics, pred, target, mask = case
    out = run_in_batches(metrics, pred, target, mask, parts=1)
    assert set(out) == set(metrics.names)
    assert all(math.isnan(v) for v in out.values()), out
    metrics.reset(CPU)  # and no batch at all (an empty split)
    assert all(math.isnan(v) for v in metrics.compute().values())


# ---------------------------------------------------------------------------------- classification


def test_accuracy_is_micro_and_macro_f1_over_classes_in_target_or_prediction():
    g = torch.Generator().manual_seed(3)
    n, c = 400, 8
    target = torch.randint(0, 5, (n,), generator=g)  # classes 5..7 never occur in the target
    logits = torch.randn(n, c, generator=g)
    logits[:, 7] -= 10  # ... and 7 is never predicted: left out of macro-F1; 5, 6 are predicted (F1 0)
    mask = torch.rand(n, generator=g) > 0.2
    out = run_in_batches(ClassificationMetrics(c), logits, target, mask)
    y, p = target[mask].numpy(), logits[mask].argmax(1).numpy()
    assert {5, 6} <= set(p) and 7 not in set(p) | set(y)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert out["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    assert out["macro_f1"] != pytest.approx(f1_score(y, p, labels=list(range(c)), average="macro", zero_division=0))


def test_binary_and_multilabel_f1_average_all_labels_with_zero_for_never_positive_ones():
    g = torch.Generator().manual_seed(4)
    n, labels = 300, 4
    target = (torch.rand(n, labels, generator=g) < 0.3).float()
    target[:, 3] = 0.0
    logits = torch.randn(n, labels, generator=g)
    logits[:, 3] = -5.0  # label 3 is never positive, in target or prediction: F1 0, still averaged
    mask = torch.rand(n, generator=g) > 0.3
    out = run_in_batches(MultilabelMetrics(labels), logits, target, mask)
    t, p = target[mask].numpy().astype(int), (logits[mask] >= 0).numpy().astype(int)
    assert out["f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)
    assert out["accuracy"] == pytest.approx(float((t == p).mean()), abs=1e-12)  # per element ...
    assert out["accuracy"] != pytest.approx(accuracy_score(t, p))  # ... not sklearn's exact-match subset accuracy
    binary = run_in_batches(MultilabelMetrics(1), logits[:, :1], target[:, 0], mask)
    assert binary["f1"] == pytest.approx(f1_score(t[:, 0], p[:, 0], zero_division=0), abs=1e-12)
    assert binary["accuracy"] == pytest.approx(accuracy_score(t[:, 0], p[:, 0]), abs=1e-12)
    never = run_in_batches(MultilabelMetrics(1), torch.full((5, 1), -3.0), torch.zeros(5), None, parts=1)
    assert never == {"accuracy": 1.0, "f1": 0.0}  # no positive anywhere: F1 0 (sklearn zero_division=0)


# ----------------------------------------------------------------------------------------- regression


def test_multi_output_rmse_is_pooled_over_all_values_not_averaged_per_output():
    g = torch.Generator().manual_seed(5)
    n = 200
    target = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1])  # outputs on different scales
    pred = target + torch.randn(n, 3, generator=g) * torch.tensor([0.5, 5.0, 0.01])
    mask = torch.rand(n, generator=g) > 0.25
    out = run_in_batches(RegressionMetrics(3), pred, target, mask)
    y, p = target[mask].double().numpy(), pred[mask].double().numpy()
    assert out["rmse"] == pytest.approx(float(np.sqrt(((p - y) ** 2).mean())), rel=1e-6)
    assert out["rmse"] != pytest.approx(root_mean_squared_error(y, p), rel=1e-2)  # sklearn: mean of per-output
    assert out["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-6)  # equal counts: the same either way


# --------------------------------------------------------------------------------------- segmentation


def _seg_data(seed, n=6, c=6, h=5, w=7, ignore=-1):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c - 1, (n, h, w), generator=g)  # class c-1 never in the target
    target[torch.rand(n, h, w, generator=g) < 0.15] = ignore
    logits = torch.randn(n, c, h, w, generator=g)
    logits[:, 2] -= 10  # class 2 is rarely predicted
    mask = torch.tensor([True, True, False, True, True, True])[:n]
    return logits, target, mask


def test_miou_from_the_split_confusion_matrix_over_classes_in_target_or_prediction():
    logits, target, mask = _seg_data(6)
    c = logits.shape[1]
    out = run_in_batches(SegmentationMetrics(c), logits, target, mask)
    keep = (target != -1) & mask.view(-1, 1, 1)
    y, p = target[keep].numpy(), logits.argmax(1)[keep].numpy()
    present = sorted(set(y) | set(p))
    assert c - 1 in set(p) and c - 1 not in set(y)  # a class only predicted: IoU 0, counted
    assert out["miou"] == pytest.approx(jaccard_score(y, p, labels=present, average="macro"), abs=1e-12)
    assert out["pixel_accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    # one image at a time and averaged would give another number: the split's matrix is what counts
    per_image = [jaccard_score(y_i, p_i, labels=sorted(set(y_i) | set(p_i)), average="macro")
                 for y_i, p_i in ((target[i][keep[i]].numpy(), logits[i].argmax(0)[keep[i]].numpy())
                                  for i in range(len(target)) if mask[i])]
    assert out["miou"] != pytest.approx(float(np.mean(per_image)))


def test_ignore_index_inside_the_class_range_is_not_a_class():
    logits, target, mask = _seg_data(7, ignore=0)  # id 0 marks unlabelled pixels
    c = logits.shape[1]
    logits[:, 0] += 1.0  # the model often predicts the ignored id
    out = run_in_batches(SegmentationMetrics(c, ignore_index=0), logits, target, mask)
    keep = (target != 0) & mask.view(-1, 1, 1)
    y, p = target[keep].numpy(), logits.argmax(1)[keep].numpy()
    assert (p == 0).sum() > 10 and 0 not in set(y)
    classes = sorted((set(y) | set(p)) - {0})  # the ignored id is no class: not in the mean ...
    # ... and a pixel predicted as it is a miss of its true class: jaccard over the other labels counts
    # it in that class's union (false negative), as torchmetrics' JaccardIndex(ignore_index=0) does
    assert out["miou"] == pytest.approx(jaccard_score(y, p, labels=classes, average="macro"), abs=1e-12)
    assert out["pixel_accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    # the task's loss skips those pixels too
    task = Segmentation(c, ignore_index=0)
    expected = F.cross_entropy(logits[mask], target[mask], ignore_index=0)
    assert task.loss(logits, target, mask).item() == pytest.approx(expected.item(), rel=1e-5)


# -------------------------------------------------------------------------------------------- depth


def test_depth_errors_pooled_over_the_valid_pixels_of_the_split():
    g = torch.Generator().manual_seed(8)
    target = torch.rand(7, 1, 6, 5, generator=g) * 10
    target[torch.rand(7, 1, 6, 5, generator=g) < 0.3] = 0.0  # no measurement
    target[1] = 0.0  # an image with no valid pixel at all
    pred = target + torch.randn(7, 1, 6, 5, generator=g)
    mask = torch.tensor([True, True, True, False, True, True, True])
    out = run_in_batches(DepthMetrics(), pred, target, mask)
    keep = (target > 0) & mask.view(-1, 1, 1, 1)
    y, p = target[keep].double().numpy(), pred[keep].double().numpy()
    assert out["abs_err"] == pytest.approx(float(np.abs(p - y).mean()), rel=1e-9)
    assert out["rel_err"] == pytest.approx(float((np.abs(p - y) / y).mean()), rel=1e-9)


# ------------------------------------------------------------------------------------------ normals


def _normals_near_0_and_180(seed, n=4, h=16, w=16):
    g = torch.Generator().manual_seed(seed)
    target = F.normalize(torch.randn(n, 3, h, w, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)
    scale = torch.tensor([1e-6, 1e-4, 1e-2, 1.0], dtype=torch.float64)[torch.randint(0, 4, (n, 1, h, w),
                                                                                      generator=g)]
    sign = torch.where(torch.rand(n, 1, h, w, generator=g) < 0.3, -1.0, 1.0).double()  # near 180 degrees
    pred = (sign * target + scale * noise) * 2.5  # not unit length
    target = target * (1 + 0.1 * torch.rand(n, 1, h, w, generator=g, dtype=torch.float64))  # nor the target
    target[0, :, :3] = 0.0  # no normal: invalid
    return pred.float(), target.float()


def _numpy_angles(pred, target, mask=None):
    """The float64 reference: normalise both, arccos of the clipped dot product, degrees."""
    p, t = pred.double().numpy(), target.double().numpy()
    valid = (t ** 2).sum(1) > 0
    if mask is not None:
        valid &= mask.numpy()[:, None, None]
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    t = t / np.where(valid, np.linalg.norm(t, axis=1), 1.0)[:, None]
    return np.degrees(np.arccos(np.clip((p * t).sum(1), -1, 1)))[valid]


def test_normals_mean_angle_equals_a_float64_reference_also_near_0_and_180_degrees():
    pred, target = _normals_near_0_and_180(9)
    mask = torch.tensor([True, True, False, True])
    metrics = NormalsMetrics()
    out = run_in_batches(metrics, pred, target, mask)
    angles = _numpy_angles(pred, target, mask)
    assert (angles < 1e-3).sum() > 50 and (angles > 180 - 1e-3).sum() > 20
    assert abs(out["mean_angle"] - angles.mean()) < 1e-6
    for name, threshold in zip(metrics.names[2:], metrics.THRESHOLDS):
        assert out[name] == pytest.approx(float((angles < threshold).mean()), abs=1e-12)
    lower_median = np.sort(angles)[(len(angles) - 1) // 2]
    assert abs(out["median_angle"] - lower_median) <= NormalsMetrics.BIN_DEGREES
    assert int(metrics.histogram.sum()) == len(angles)
    # the float32 arccos of the old code missed the reference by far more than 1e-6 degree here
    cos32 = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1).clamp(-1, 1)
    valid = (target.square().sum(1) > 0) & mask.view(-1, 1, 1)
    assert abs(torch.rad2deg(torch.acos(cos32))[valid].double().mean().item() - angles.mean()) > 1e-5


def test_normals_per_pixel_angle_is_accurate_at_0_and_180_degrees():
    from mtlrun.metrics import normal_angles

    z = torch.tensor([0.0, 0.0, 1.0])
    tiny = torch.tensor([1e-7, 0.0, 1.0])  # 1e-7 rad = 5.7e-6 degree
    pred = torch.stack([z, -z, tiny, -tiny, torch.zeros(3)]).T.reshape(1, 3, 1, 5)
    target = z.view(1, 3, 1, 1).expand(1, 3, 1, 5)
    angle, valid = normal_angles(pred, target, None)
    expected = [0.0, 180.0, math.degrees(1e-7), 180.0 - math.degrees(1e-7), 90.0]  # zero prediction: 90
    assert angle.dtype == torch.float64 and valid.all()
    assert angle.flatten().tolist() == pytest.approx(expected, abs=1e-9)
