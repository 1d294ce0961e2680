"""Dense (per-pixel) tasks: losses and metrics against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlrun.data.base import TargetInfo
from mtlrun.metrics import DepthMetrics, NormalsMetrics, SegmentationMetrics
from mtlrun.tasks import Classification, Depth, Normals, Regression, Segmentation, Task

CPU = torch.device("cpu")


def run_metrics(metrics, batches):
    metrics.reset(CPU)
    for pred, target, mask in batches:
        metrics.update(pred, target, mask)
    return metrics.compute()


def one_hot_map(labels, num_classes):
    """Logits [B, C, H, W] whose argmax is `labels` [B, H, W]."""
    return F.one_hot(torch.as_tensor(labels), num_classes).permute(0, 3, 1, 2).float() * 4.0 - 2.0


def unit(*v):
    v = torch.tensor(v, dtype=torch.float32)
    return v / v.norm()


def normal_map(vectors):
    """[B, 3, 1, P] from a list (per sample) of lists of 3-vectors."""
    return torch.stack([torch.stack(list(vs), dim=1)[:, None, :] for vs in vectors])


# ------------------------------------------------------------------------------------ task basics


def test_dense_flag_and_output_dims():
    assert Task.dense is False
    assert not Classification(3).dense and not Regression().dense
    assert Segmentation(7).dense and Depth().dense and Normals().dense
    assert (Segmentation(7).output_dim, Depth().output_dim, Normals().output_dim) == (7, 1, 3)
    assert Segmentation(7).metric_names == ("miou", "pixel_accuracy")
    assert Depth().higher_is_better == {"abs_err": False, "rel_err": False}
    assert Normals().higher_is_better == {"mean_angle": False, "median_angle": False, "within_11_25": True,
                                          "within_22_5": True, "within_30": True}


def _named(task, name):
    task.name = name
    return task


def test_check_accepts_matching_targets():
    assert _named(Segmentation(5), "seg").check(TargetInfo("segmentation", num_classes=5)) == []
    assert _named(Depth(), "depth").check(TargetInfo("depth", dim=1)) == []
    assert _named(Normals(), "normals").check(TargetInfo("normals", dim=3)) == []


def test_check_reports_kind_classes_and_dim_with_config_keys():
    [wrong_kind] = _named(Segmentation(5), "seg").check(TargetInfo("depth", dim=1))
    assert wrong_kind.startswith("tasks.seg:") and "segmentation" in wrong_kind and "depth" in wrong_kind
    [classes] = _named(Segmentation(13), "seg").check(TargetInfo("segmentation", num_classes=5))
    assert "tasks.seg.num_classes=13" in classes and "set tasks.seg.num_classes=5" in classes
    [dim] = _named(Normals(), "n").check(TargetInfo("normals", dim=2))
    assert dim.startswith("tasks.n:") and "3" in dim and "2" in dim
    [depth_as_regression] = _named(Depth(), "d").check(TargetInfo("regression", dim=1))
    assert depth_as_regression.startswith("tasks.d:")
    # and a classic task on a dense target says so too
    [classic] = _named(Classification(5), "seg").check(TargetInfo("segmentation", num_classes=5))
    assert classic.startswith("tasks.seg:") and "segmentation" in classic


# ------------------------------------------------------------------------------------ segmentation


def test_segmentation_loss_is_pixel_cross_entropy_over_labelled_pixels():
    torch.manual_seed(0)
    pred = torch.randn(3, 4, 5, 6)
    target = torch.randint(0, 4, (3, 5, 6))
    target[0, :2] = -1  # ignored pixels
    mask = torch.tensor([True, False, True])
    expected = F.cross_entropy(pred[mask], target[mask], ignore_index=-1)  # mean over the valid pixels
    assert Segmentation(4).loss(pred, target, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert Segmentation(4).loss(pred, target, None).item() == pytest.approx(
        F.cross_entropy(pred, target, ignore_index=-1).item(), rel=1e-6)
    # a different ignore index
    target255 = torch.where(target < 0, 255, target)
    assert Segmentation(4, ignore_index=255).loss(pred, target255, None).item() == pytest.approx(
        F.cross_entropy(pred, target, ignore_index=-1).item(), rel=1e-6)


def test_segmentation_metrics_by_hand_with_absent_class_and_ignored_pixels():
    # 4 classes; class 3 never appears (target nor prediction) -> left out of mIoU;
    # class 2 is only predicted -> IoU 0, counted. One ignored pixel with a wrong prediction.
    target = torch.tensor([[[0, 0, 1], [1, 1, -1]]])
    predicted = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    out = run_metrics(SegmentationMetrics(4), [(one_hot_map(predicted, 4), target, None)])
    # the 5 valid pixels as (target, prediction): (0,0) (0,1) (1,1) (1,1) (1,2); union = |t=c| + |p=c| - tp
    # class 0: tp 1, union 2 + 1 - 1 = 2; class 1: tp 2, union 3 + 3 - 2 = 4; class 2: tp 0, union 0 + 1 - 0 = 1
    iou = [1 / 2, 2 / 4, 0 / 1]
    assert out["miou"] == pytest.approx(sum(iou) / 3)
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)


def test_segmentation_metrics_leave_out_unlabelled_samples():
    target = torch.tensor([[[0, 1]], [[1, 0]]])
    pred = one_hot_map(torch.tensor([[[0, 1]], [[0, 1]]]), 2)  # right on sample 0, wrong on sample 1
    out = run_metrics(SegmentationMetrics(2), [(pred, target, torch.tensor([True, False]))])
    assert out == {"miou": 1.0, "pixel_accuracy": 1.0}
    placeholder = torch.full_like(target, -1)  # what hide_unlabelled stores for an unlabelled sample
    out = run_metrics(SegmentationMetrics(2), [(pred, torch.cat([target[:1], placeholder[1:]]),
                                                torch.tensor([True, False]))])
    assert out == {"miou": 1.0, "pixel_accuracy": 1.0}


# ------------------------------------------------------------------------------------------- depth


def test_depth_loss_and_metrics_by_hand():
    target = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])  # one missing pixel
    pred = torch.tensor([[[[1.5, 1.0], [9.0, 5.0]]]])
    errors = [0.5, 1.0, 1.0]  # valid pixels only
    assert Depth().loss(pred, target, None).item() == pytest.approx(sum(errors) / 3)
    out = run_metrics(DepthMetrics(), [(pred, target, None)])
    assert out["abs_err"] == pytest.approx(sum(errors) / 3)
    assert out["rel_err"] == pytest.approx((0.5 / 1 + 1.0 / 2 + 1.0 / 4) / 3)


def test_depth_ignores_unlabelled_samples_with_nan_placeholders():
    target = torch.tensor([[[[2.0]]], [[[float("nan")]]]])
    pred = torch.tensor([[[[3.0]]], [[[100.0]]]], requires_grad=True)
    mask = torch.tensor([True, False])
    loss = Depth().loss(pred, target, mask)
    loss.backward()
    assert loss.item() == 1.0 and torch.isfinite(pred.grad).all() and pred.grad[1].item() == 0.0
    assert run_metrics(DepthMetrics(), [(pred.detach(), target, mask)]) == {"abs_err": 1.0, "rel_err": 0.5}


# ----------------------------------------------------------------------------------------- normals


def test_normals_loss_and_angle_metrics_by_hand():
    z = unit(0, 0, 1)
    angles = [0.0, 10.0, 20.0, 25.0, 60.0, 90.0, 180.0]
    preds = [unit(math.sin(math.radians(a)), 0, math.cos(math.radians(a))) * 3.0 for a in angles]  # not unit
    pred, target = normal_map([preds]), normal_map([[z] * len(angles)])
    target[..., -1] = 0.0  # the 180-degree pixel has no normal: invalid
    valid = angles[:-1]
    cosines = [math.cos(math.radians(a)) for a in valid]
    assert Normals().loss(pred, target, None).item() == pytest.approx(sum(1 - c for c in cosines) / len(valid),
                                                                      abs=1e-6)
    out = run_metrics(NormalsMetrics(), [(pred, target, None)])
    assert out["mean_angle"] == pytest.approx(sum(valid) / len(valid), abs=1e-3)
    assert out["within_11_25"] == pytest.approx(2 / 6)
    assert out["within_22_5"] == pytest.approx(3 / 6)
    assert out["within_30"] == pytest.approx(4 / 6)
    # six values: the lower median is the 3rd smallest, 20 degrees; within one 0.1-degree bin
    assert out["median_angle"] == pytest.approx(20.0, abs=NormalsMetrics.BIN_DEGREES)


def test_normals_target_need_not_be_exactly_unit():
    pred = normal_map([[unit(0, 1, 1)]])
    target = normal_map([[torch.tensor([0.0, 0.0, 0.5])]])
    assert Normals().loss(pred, target, None).item() == pytest.approx(1 - math.cos(math.pi / 4), abs=1e-6)


def test_median_angle_from_histogram_matches_torch_median_within_a_bin():
    gen = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(4, 3, 16, 16, generator=gen), dim=1)
    pred = target + 0.4 * torch.randn(4, 3, 16, 16, generator=gen)
    target[0, :, :4] = 0.0  # some invalid pixels
    metrics = NormalsMetrics()
    out = run_metrics(metrics, [(pred[:2], target[:2], None), (pred[2:], target[2:], None)])
    cos = (F.normalize(pred, dim=1) * target).sum(1)
    valid = target.norm(dim=1) > 0
    angles = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))[valid].double()
    assert int(metrics.histogram.sum()) == valid.sum().item()
    assert abs(out["median_angle"] - torch.median(angles).item()) <= NormalsMetrics.BIN_DEGREES
    assert out["mean_angle"] == pytest.approx(angles.mean().item(), rel=1e-5)
    assert out["within_22_5"] == pytest.approx((angles < 22.5).double().mean().item())


def test_median_of_a_single_pixel_and_of_an_exact_bin():
    metrics = NormalsMetrics()
    metrics.reset(CPU)
    metrics.histogram[450] = 3  # three angles in [45.0, 45.1)
    assert 45.0 <= metrics.median_from_histogram() < 45.1
    metrics.histogram[:] = 0
    metrics.histogram[0], metrics.histogram[1799] = 1, 1  # lower median of {~0, ~180} is the small one
    assert metrics.median_from_histogram() < 0.1


# ------------------------------------------------------------------- all-invalid batches, precision


@pytest.mark.parametrize("case", ["segmentation", "depth", "normals"])
def test_batch_without_valid_pixels_gives_exactly_zero_loss_and_finite_gradients(case):
    b, h, w = 2, 3, 4
    if case == "segmentation":
        task, pred = Segmentation(3), torch.randn(b, 3, h, w)
        targets = [torch.full((b, h, w), -1), torch.randint(0, 3, (b, h, w))]
    elif case == "depth":
        task, pred = Depth(), torch.randn(b, 1, h, w)
        targets = [torch.zeros(b, 1, h, w), torch.full((b, 1, h, w), float("nan"))]
    else:
        task, pred = Normals(), torch.randn(b, 3, h, w)
        targets = [torch.zeros(b, 3, h, w), torch.full((b, 3, h, w), float("nan"))]
    for target, mask in [(targets[0], None), (targets[1], torch.zeros(b, dtype=torch.bool))]:
        p = pred.clone().requires_grad_(True)
        loss = task.loss(p, target, mask)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(p.grad).all() and p.grad.abs().sum() == 0
        out = run_metrics(task.metrics(), [(pred, target, mask)])  # nothing measured: missing, not 0
        assert set(out) == set(task.metric_names) and all(math.isnan(v) for v in out.values()), out


@pytest.mark.parametrize("task", [Segmentation(3), Depth(), Normals()], ids=lambda t: t.kind)
def test_losses_are_float32_under_bf16_autocast(task):
    conv = nn.Conv2d(2, task.output_dim, 1)
    x = torch.randn(2, 2, 4, 4)
    target = {"segmentation": torch.randint(0, 3, (2, 4, 4)), "depth": torch.rand(2, 1, 4, 4) + 0.5,
              "normals": F.normalize(torch.randn(2, 3, 4, 4), dim=1)}[task.kind]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = conv(x)
        loss = task.loss(pred, target, None)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    metrics = task.metrics()
    metrics.reset(CPU)
    metrics.update(pred.detach(), target, None)
    assert all(math.isfinite(v) for v in metrics.compute().values())


# -------------------------------------------------------------------------- sufficient statistics


def _random_batch(kind, gen, b=3, h=5, w=6):
    if kind == "segmentation":
        target = torch.randint(-1, 4, (b, h, w), generator=gen)
        return torch.randn(b, 4, h, w, generator=gen), target
    if kind == "depth":
        target = torch.rand(b, 1, h, w, generator=gen) * 5
        target[target < 1] = 0.0
        return torch.rand(b, 1, h, w, generator=gen) * 5, target
    target = F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
    target[:, :, :1] = 0.0
    return torch.randn(b, 3, h, w, generator=gen), target


@pytest.mark.parametrize("metrics_cls", [lambda: SegmentationMetrics(4), DepthMetrics, NormalsMetrics],
                         ids=["segmentation", "depth", "normals"])
def test_states_of_two_batches_sum_to_the_states_of_both_at_once(metrics_cls):
    kind = {SegmentationMetrics: "segmentation", DepthMetrics: "depth", NormalsMetrics: "normals"}[type(metrics_cls())]
    gen = torch.Generator().manual_seed(1)
    (p1, t1), (p2, t2) = _random_batch(kind, gen), _random_batch(kind, gen)
    m1, m2 = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    # two accumulators (e.g. two DDP ranks) whose states are summed ...
    a, b = metrics_cls(), metrics_cls()
    a.reset(CPU), b.reset(CPU)
    a.update(p1, t1, m1)
    b.update(p2, t2, m2)
    for sa, sb in zip(a.states(), b.states()):
        sa += sb
    # ... equal one accumulator over both batches at once
    whole = metrics_cls()
    whole.reset(CPU)
    whole.update(torch.cat([p1, p2]), torch.cat([t1, t2]), torch.cat([m1, m2]))
    for sa, sw in zip(a.states(), whole.states()):
        assert sa.dtype == sw.dtype
        assert torch.allclose(sa.double(), sw.double(), rtol=1e-12, atol=1e-9)
    for key, value in whole.compute().items():
        assert a.compute()[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


# ---------------------------------------------------------------- a tiny model through loss + metrics


def test_a_tiny_conv_model_through_every_dense_task():
    from mtlrun.data.scenes import Scenes

    data = Scenes(n_train=8, n_val=4, n_test=4, image_size=16, seed=3)
    batch = data.dataset("train").__getitems__(list(range(8)))
    tasks = {"segmentation": Segmentation(5), "depth": Depth(), "normals": Normals()}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, sum(t.output_dim for t in tasks.values()), 3, padding=1))
    out = model(batch["inputs"]["image"])
    preds = dict(zip(tasks, out.split([t.output_dim for t in tasks.values()], dim=1)))
    losses = {name: task.loss(preds[name], batch["targets"][name], None) for name, task in tasks.items()}
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    assert losses["segmentation"].item() == pytest.approx(
        F.cross_entropy(preds["segmentation"], batch["targets"]["segmentation"]).item(), rel=1e-6)
    assert losses["depth"].item() == pytest.approx(
        (preds["depth"] - batch["targets"]["depth"]).abs().mean().item(), rel=1e-6)
    for name, task in tasks.items():
        metrics = task.metrics()
        metrics.reset(CPU)
        metrics.update(preds[name].detach(), batch["targets"][name], None)
        values = metrics.compute()
        assert set(values) == set(task.metric_names)
        assert all(math.isfinite(v) for v in values.values())
    assert 0 <= values["median_angle"] <= 180 and 0 <= values["within_30"] <= 1
