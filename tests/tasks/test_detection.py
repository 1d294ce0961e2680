"""The detection task (mtlrun.detection, FCOS): target assignment, loss masking, decoding, and COCO metrics
equal to pycocotools' on the same detections."""

from __future__ import annotations

import math

import pytest
import torch

from contracts import NoHostSync, requires
from mtlrun.data.base import TargetInfo
from mtlrun.detection import assign, decode, grid_points
from mtlrun.errors import UsageError
from mtlrun.tasks import Detection

CPU = torch.device("cpu")
C = 3


def boxes(*rows, slots=3):
    """A [1, slots, 5] target from (x1, y1, x2, y2, class) rows, padded with class -1."""
    out = torch.full((1, slots, 5), -1.0)
    out[..., :4] = 0
    for i, row in enumerate(rows):
        out[0, i] = torch.tensor(row, dtype=torch.float32)
    return out


def perfect_prediction(target, size=32, stride=4, logit=8.0):
    """Raw head output [B, C + 5, h, w] that decodes to exactly the target's boxes at the positive locations."""
    h = w = size // stride
    points = grid_points(h, w, stride, CPU)
    positive, box, cls = assign(points, target, stride, 1.5)
    pred = torch.full((len(target), C + 5, h * w), -logit)
    dist = torch.cat([points - box[..., :2], box[..., 2:] - points], -1).clamp_min(1e-3) / stride
    pred[:, C:C + 4] = dist.log().transpose(1, 2)
    l, t, r, b = dist.unbind(-1)
    centreness = ((torch.minimum(l, r) / torch.maximum(l, r)) * (torch.minimum(t, b) / torch.maximum(t, b))).sqrt()
    pred[:, C + 4] = torch.logit(centreness.clamp(0.01, 0.99))  # FCOS's centre-ness target, as a logit
    for b in range(len(target)):
        pred[b, cls[b][positive[b]], positive[b].nonzero().squeeze(1)] = logit
    return pred.view(len(target), C + 5, h, w)


def task(**kw):
    t = Detection(num_classes=C, **kw)
    t.name = "det"
    return t


def test_assignment_takes_locations_near_the_centre_of_the_smallest_box():
    points = grid_points(8, 8, 4, CPU)  # centres 2, 6, ..., 30
    target = boxes((0, 0, 32, 32, 0), (8, 8, 16, 16, 2))
    positive, box, cls = assign(points, target, stride=4, center_radius=1.5)
    grid = positive.view(8, 8)
    # the small box (centre 12, 12) owns the locations within 6 px of it, inside it: x, y in {10, 14}
    small = (cls.view(8, 8) == 2) & grid
    assert small.nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    assert box.view(8, 8, 4)[2, 2].tolist() == [8, 8, 16, 16]
    # the big box (centre 16, 16) owns its centre region (x, y in {14, 18}) but the small box's cell (14, 14)
    big = (cls.view(8, 8) == 0) & grid
    assert big.nonzero().tolist() == [[3, 4], [4, 3], [4, 4]]
    assert not grid[0].any()  # far from both centres


def test_background_images_train_and_unlabelled_images_give_exactly_zero():
    t = task()
    pred = torch.randn(2, C + 5, 8, 8, requires_grad=True)
    background = torch.cat([boxes(), boxes()])  # no box: every location is background
    loss = t.loss(pred, background, None)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert pred.grad[:, :C].abs().sum() > 0 and pred.grad[:, C:].abs().sum() == 0  # only the classifier learns
    pred.grad = None
    nan_placeholder = torch.full((2, 3, 5), math.nan)  # what an unlabelled table cell collates to
    zero = t.loss(pred, nan_placeholder, torch.tensor([False, False]))
    assert zero.item() == 0.0
    zero.backward()
    assert pred.grad.abs().sum() == 0


def test_an_unlabelled_image_does_not_change_the_loss_of_the_labelled_ones():
    t = task()
    target = torch.cat([boxes((4, 4, 20, 20, 1)), boxes((8, 0, 30, 12, 0))])
    pred = torch.randn(2, C + 5, 8, 8)
    alone = t.loss(pred[:1], target[:1], None)
    masked = t.loss(pred, target, torch.tensor([True, False]))
    torch.testing.assert_close(alone, masked)


def test_a_perfect_prediction_has_a_small_loss_and_decodes_to_the_true_boxes():
    t = task()
    target = torch.cat([boxes((4, 4, 20, 20, 1), (16, 8, 30, 30, 2)), boxes()])
    pred = perfect_prediction(target)
    # what is left is the entropy of the soft centre-ness targets (a BCE floor), nothing of the boxes
    assert t.loss(pred, target, None) < t.loss(torch.zeros_like(pred), target, None) / 5
    found = decode(pred, C, stride=4)
    assert len(found[1]["boxes"]) == 0  # the background image: nothing scores
    got = sorted(zip(found[0]["labels"].tolist(), [[round(v) for v in b] for b in found[0]["boxes"].tolist()]))
    assert got == [(1, [4, 4, 20, 20]), (2, [16, 8, 30, 30])]  # NMS keeps one box per object


@requires("torchmetrics", "detection")
def test_a_perfect_prediction_scores_a_map_of_one():
    t = task()
    target = torch.cat([boxes((4, 4, 20, 20, 1), (16, 8, 30, 30, 2)), boxes()])
    pred = perfect_prediction(target)
    metrics = t.metrics()
    metrics.reset(CPU)
    metrics.update(pred, target, None)
    values = metrics.compute()
    assert values["map"] == pytest.approx(1.0) and values["map_50"] == pytest.approx(1.0)
    assert values["map_1"] == pytest.approx(1.0) and math.isnan(values["map_0"])  # no sphere in the split


def test_metrics_of_nothing_labelled_are_missing():
    metrics = task(class_names=["a", "b", "c"]).metrics()
    metrics.reset(CPU)
    metrics.update(torch.zeros(2, C + 5, 4, 4), torch.zeros(2, 3, 5), torch.tensor([False, False]))
    values = metrics.compute()
    assert set(values) == {"map", "map_50", "map_75", "mar_100", "map_a", "map_b", "map_c"}
    assert all(math.isnan(v) for v in values.values())
    assert all(metrics.higher_is_better.values())


def test_coco_metrics_equal_pycocotools_on_the_same_detections():
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    g = torch.Generator().manual_seed(0)
    n, size = 12, 64
    targets = []
    for i in range(n):
        rows = []
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            x, y = torch.randint(0, 40, (2,), generator=g).tolist()
            w, h = torch.randint(6, 24, (2,), generator=g).tolist()
            rows.append((x, y, min(size, x + w), min(size, y + h), int(torch.randint(0, C, (1,), generator=g))))
        targets.append(boxes(*rows, slots=4))
    target = torch.cat(targets)
    # noisy scores and box sides: some detections miss, some are false, many sit between IoU 0.5 and 0.95
    scale = torch.tensor([6.0] * C + [0.15] * 4 + [1.0]).view(1, -1, 1, 1)
    pred = perfect_prediction(target, size=size) + scale * torch.randn(n, C + 5, 16, 16, generator=g)
    mask = torch.ones(n, dtype=torch.bool)
    mask[3] = False  # unlabelled: neither its boxes nor its detections count
    metrics = task().metrics()
    metrics.reset(CPU)
    metrics.update(pred[:6], target[:6], mask[:6])
    metrics.update(pred[6:], target[6:], mask[6:])
    ours = metrics.compute()

    detections = decode(pred, C, stride=4)
    images = [i for i in range(n) if mask[i]]
    gt = {"images": [{"id": i, "width": size, "height": size} for i in images],
          "categories": [{"id": c} for c in range(C)], "annotations": []}
    dt = []
    for i in images:
        for x1, y1, x2, y2, c in target[i].tolist():
            if c >= 0:
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(c),
                                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                          "iscrowd": 0})
        for (x1, y1, x2, y2), s, c in zip(detections[i]["boxes"].tolist(), detections[i]["scores"].tolist(),
                                          detections[i]["labels"].tolist()):
            dt.append({"image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    coco = coco_mod.COCO()
    coco.dataset = gt
    coco.createIndex()
    evaluation = cocoeval.COCOeval(coco, coco.loadRes(dt), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    stats = evaluation.stats
    assert 0.05 < stats[0] < 0.95  # a non-trivial case
    for key, index in (("map", 0), ("map_50", 1), ("map_75", 2), ("mar_100", 8)):
        assert ours[key] == pytest.approx(stats[index], abs=1e-4), key
    precision = evaluation.eval["precision"][:, :, :, 0, 2]  # [T, R, K] at all areas, 100 detections
    for c in range(C):
        p = precision[:, :, c]
        expected = p[p > -1].mean() if (p > -1).any() else math.nan
        assert ours[f"map_{c}"] == pytest.approx(expected, abs=1e-4, nan_ok=True)


def test_check_against_the_data_and_bad_options():
    t = task()
    assert t.check(TargetInfo("detection", num_classes=C, dim=5)) == []
    assert "num_classes=3 but the data has 4" in t.check(TargetInfo("detection", num_classes=4, dim=5))[0]
    assert "is a detection task" in t.check(TargetInfo("segmentation", num_classes=C))[0]
    with pytest.raises(UsageError, match="class_names"):
        Detection(num_classes=2, class_names=["a"])
    with pytest.raises(UsageError, match="stride"):
        Detection(num_classes=2, stride=0)
    with pytest.raises(UsageError, match="nms_iou"):
        Detection(num_classes=2, nms_iou=1.5)
    for key in ("center_radius", "score_threshold", "nms_iou"):
        for value in (math.nan, math.inf):
            with pytest.raises(UsageError, match=rf"^{key}={value}: must be a number in"):
                Detection(num_classes=2, **{key: value})


def test_the_loss_and_its_gradient_read_nothing_back_from_the_device():
    t = task()
    target = torch.cat([boxes((4, 4, 20, 20, 1), (16, 8, 30, 30, 2)), boxes(), torch.full((1, 3, 5), math.nan)])
    pred = torch.randn(3, C + 5, 8, 8, requires_grad=True)
    with NoHostSync():
        loss = t.loss(pred, target, torch.tensor([True, True, False]))
        loss.backward()
    assert torch.isfinite(loss) and pred.grad.abs().sum() > 0
    metrics = t.metrics()
    metrics.reset(CPU)
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():  # the guard does catch one: decoding
        metrics.update(pred.detach(), target, None)


def test_giou_loss_is_torchvisions():
    from torchvision.ops import generalized_box_iou_loss

    from mtlrun.detection import giou_loss

    g = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 200, 2, 2, generator=g) * 50
    a, b = (torch.cat([c.min(1).values, c.max(1).values + 0.5], -1) for c in corners)
    torch.testing.assert_close(giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none"))


@pytest.mark.parametrize("weighting", ["static", "upgrad"])
def test_a_training_step_of_scenes_det_reads_nothing_back_from_the_device(tmp_path, weighting):
    """Between two log steps, Trainer.step on experiment=scenes_det (detection + segmentation + depth: target
    assignment, the three losses, the backward, the weighting, the optimizer) makes no call that would make a GPU
    wait for the host. upgrad reads its Gramian on the host by design (benchmarks/gpu_check.py's KNOWN_SYNCS):
    the guard must find exactly that one."""
    if weighting == "upgrad":
        pytest.importorskip("qpsolvers")
    from contracts import compose_config
    from mtlrun.build import build_trainer
    from mtlrun.data.loading import to_device
    from mtlrun.distributed import DistInfo

    cfg = compose_config(["experiment=scenes_det", "data.n_train=16", "data.n_val=4", "data.n_test=4",
                          "data.image_size=32", "data.batch_size=4", "backbone.image.channels=[4,8,8]",
                          "trainer.device=cpu", "trainer.log_every_n_steps=1000", f"weighting={weighting}",
                          # SGD: Adam(W) reads its step counter with .item(), a tensor PyTorch keeps on the host
                          # (no GPU wait), which this CPU-side guard cannot tell from a device read
                          "optim=sgd"])
    trainer = build_trainer(cfg, str(tmp_path), dist=DistInfo())
    loader = trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)
    first, second = (to_device(b, trainer.device) for b, _ in zip(loader, range(2)))
    trainer.step([first])  # lazy state (optimizer moments)
    if weighting == "upgrad":
        with pytest.raises(AssertionError, match="host sync"), NoHostSync():
            trainer.step([second])
        return
    with NoHostSync():
        trainer.step([second])
    assert trainer.global_step == 2
