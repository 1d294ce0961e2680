"""Object detection as a task: FCOS on the shared feature map, COCO metrics.

FCOS (Tian, Shen, Chen, He: "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019), one level
(no FPN: the shared map is one resolution), with the paper's centre sampling (FCOS v2 / the journal version).

Target layout (what the data provides per image, collated to a batch like any other target):
    float [M, 5]: rows (x1, y1, x2, y2, class) in pixels of the input image, x to the right, y down, a box
    covering the pixels x1 <= x < x2, y1 <= y < y2; class 0..C-1; a row with class -1 is padding (M is the
    data's most boxes in one image). An image with no box (all padding) is a background image: it trains the
    classifier towards "nothing here". An unlabelled image is masked by `label_mask`, as for other tasks.

Prediction layout (the raw head output, also what `mtlrun export` writes):
    float [B, C + 5, h, w] on a grid of stride s (the task's `stride`): location (i, j) is the image point
    ((j + 0.5) s, (i + 0.5) s); channels 0..C-1 are class logits, C..C+3 the log distances (l, t, r, b) to
    the box sides in units of s, C+4 the centre-ness logit. Decoding (`decode`, only at evaluation):
    distance = exp(raw) * s, box = (x - l, y - t, x + r, y + b) clipped to the image,
    score = sqrt(sigmoid(class) * sigmoid(centre-ness)), scores below `score_threshold` dropped, the best
    `pre_nms_top_k`, class-wise NMS at `nms_iou` (torchvision.ops.batched_nms), the best `max_detections`.

Loss (per batch, no host sync): sigmoid focal loss (alpha 0.25, gamma 2) over every location and class of
the labelled images, plus GIoU loss and centre-ness BCE over the positive locations, each divided by the
batch's number of positive locations (at least 1), as in FCOS. A location is positive for a box when it
lies inside the box and within `center_radius` * s of the box centre; of several such boxes it takes the
smallest (FCOS's rule).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from mtlrun import distributed
from mtlrun.checks import import_extra
from mtlrun.metrics import Metrics

MAX_LOG_DISTANCE = 10.0  # exp(10) strides: far beyond any image; keeps exp finite under fp16 autocast


def grid_points(h: int, w: int, stride: int, device) -> torch.Tensor:
    """[h * w, 2] image coordinates (x, y) of the locations of an h x w map of stride `stride`."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def split_prediction(pred: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, C + 5, h, w] -> class logits [B, L, C], log distances [B, L, 4], centre-ness logits [B, L] (fp32)."""
    flat = pred.float().flatten(2).transpose(1, 2)
    return flat[..., :num_classes], flat[..., num_classes:num_classes + 4], flat[..., num_classes + 4]


def distances_to_boxes(points: torch.Tensor, log_dist: torch.Tensor, stride: int) -> torch.Tensor:
    """Boxes [..., L, 4] (x1, y1, x2, y2) from the locations [L, 2] and the predicted log distances."""
    d = log_dist.clamp(max=MAX_LOG_DISTANCE).exp() * stride
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


def giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU of boxes `a` and `b` [..., 4] pairwise by position: torchvision.ops.generalized_box_iou_loss's
    formula without its boolean-mask assignment, which would make a GPU wait for the host every step."""
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    inter = ((torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_min(0)
             * (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_min(0))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    enclosing = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)) * (torch.maximum(ay2, by2) - torch.minimum(ay1, by1))
    return 1 - inter / (union + eps) + (enclosing - union) / (enclosing + eps)


def assign(points: torch.Tensor, target: torch.Tensor, stride: int, center_radius: float):
    """FCOS targets for every location of every image at once (no loop over images).

    Returns positive [B, L] bool, the matched box [B, L, 4] and its class [B, L] (meaningless where not
    positive)."""
    boxes, cls = target[..., :4].float(), target[..., 4]
    valid = cls >= 0  # [B, M]
    x, y = points[:, 0].view(1, -1, 1), points[:, 1].view(1, -1, 1)  # [1, L, 1]
    x1, y1, x2, y2 = (boxes[..., k].unsqueeze(1) for k in range(4))  # [B, 1, M]
    inside = (x > x1) & (x < x2) & (y > y1) & (y < y2)
    r = center_radius * stride
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    near_centre = ((x - cx).abs() < r) & ((y - cy).abs() < r)
    candidate = inside & near_centre & valid.unsqueeze(1)  # [B, L, M]
    area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
    area = torch.where(candidate, area, math.inf)
    if area.shape[-1] == 0:  # no box slot at all in this data: every location is background
        b, n = target.shape[0], points.shape[0]
        return (torch.zeros(b, n, dtype=torch.bool, device=target.device), boxes.new_zeros(b, n, 4),
                cls.new_zeros(b, n).long())
    best_area, best = area.min(dim=-1)  # [B, L]
    matched = boxes.gather(1, best.unsqueeze(-1).expand(-1, -1, 4))
    return torch.isfinite(best_area), matched, cls.gather(1, best).long()


def fcos_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, num_classes: int,
              stride: int, center_radius: float) -> torch.Tensor:
    """The FCOS loss of a batch (see the module doc); exactly 0 when no image of the batch is labelled."""
    logits, log_dist, ctr_logit = split_prediction(pred, num_classes)
    points = grid_points(pred.shape[-2], pred.shape[-1], stride, pred.device)
    target = torch.nan_to_num(target.float(), nan=-1.0)  # an unlabelled placeholder: padding only
    positive, box, cls = assign(points, target, stride, center_radius)
    labelled = torch.ones(len(pred), dtype=torch.bool, device=pred.device) if mask is None else mask.bool()
    positive = positive & labelled.unsqueeze(1)
    num_pos = positive.sum().clamp_min(1).float()
    onehot = F.one_hot(cls.clamp(0, num_classes - 1), num_classes).float() * positive.unsqueeze(-1)
    # torchvision.ops is imported where detection uses it, not with this module: every mtlrun command imports this
    # module (the task registry does), and importing torchvision.ops imports torch._dynamo, seconds of start-up
    from torchvision.ops import sigmoid_focal_loss
    focal = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="none")
    focal = torch.where(labelled.view(-1, 1, 1), focal, 0.0).sum()
    # negatives get a harmless stand-in box (the location's own cell), so no NaN reaches the `where`
    cell = torch.cat([points - stride / 2, points + stride / 2], dim=-1).expand_as(box)
    box = torch.where(positive.unsqueeze(-1), box, cell)
    giou = giou_loss(distances_to_boxes(points, log_dist, stride), box)
    lt, rb = points - box[..., :2], box[..., 2:] - points
    lr, tb = torch.stack([lt[..., 0], rb[..., 0]], -1), torch.stack([lt[..., 1], rb[..., 1]], -1)
    centreness = ((lr.min(-1).values / lr.max(-1).values.clamp_min(1e-6)).clamp(0, 1)
                  * (tb.min(-1).values / tb.max(-1).values.clamp_min(1e-6)).clamp(0, 1)).sqrt()
    ctr = F.binary_cross_entropy_with_logits(ctr_logit, centreness, reduction="none")
    box_terms = torch.where(positive, giou + ctr, 0.0).sum()
    return (focal + box_terms) / num_pos


@torch.no_grad()
def decode(pred: torch.Tensor, num_classes: int, stride: int, image_size: tuple[int, int] | None = None,
           score_threshold: float = 0.05, pre_nms_top_k: int = 1000, nms_iou: float = 0.6,
           max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Detections per image: {"boxes": [N, 4], "scores": [N], "labels": [N]} (see the module doc).
    `image_size` (H, W) clips the boxes; by default the grid's extent (h * stride, w * stride)."""
    from torchvision.ops import batched_nms  # here, as in fcos_loss

    logits, log_dist, ctr_logit = split_prediction(pred, num_classes)
    h, w = pred.shape[-2:]
    points = grid_points(h, w, stride, pred.device)
    height, width = image_size or (h * stride, w * stride)
    boxes = distances_to_boxes(points, log_dist, stride)
    boxes = torch.stack([boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
                         boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)], dim=-1)
    scores = (logits.sigmoid() * ctr_logit.sigmoid().unsqueeze(-1)).sqrt()  # [B, L, C]
    out = []
    for b in range(len(pred)):  # evaluation only: the kept count differs per image
        flat = scores[b].reshape(-1)
        keep = (flat > score_threshold).nonzero().squeeze(1)
        if len(keep) > pre_nms_top_k:
            keep = keep[flat[keep].topk(pre_nms_top_k).indices]
        loc, label = keep // num_classes, keep % num_classes
        kept_boxes, kept_scores = boxes[b, loc], flat[keep]
        order = batched_nms(kept_boxes, kept_scores, label, nms_iou)[:max_detections]
        out.append({"boxes": kept_boxes[order], "scores": kept_scores[order], "labels": label[order]})
    return out


def target_boxes(target: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The true boxes per image of a [B, M, 5] target: {"boxes": [N, 4], "labels": [N]}."""
    out = []
    for row in target:
        real = row[:, 4] >= 0
        out.append({"boxes": row[real, :4].float(), "labels": row[real, 4].long()})
    return out


COCO_NAMES = ("map", "map_50", "map_75", "mar_100")


def metric_safe(names: list[str]) -> list[str]:
    """Class names usable in a metric key `<task>/map_<class>` (a `/` or a space would split or break it):
    other characters become `_`; if that makes two names equal, the class ids are used instead."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]", "_", str(n)) for n in names]
    return safe if len(set(safe)) == len(safe) else [str(i) for i in range(len(names))]


class DetectionMetrics(Metrics):
    """COCO box metrics through torchmetrics' MeanAveragePrecision (pycocotools backend): mAP@[.50:.95]
    (`map`), mAP@.50, mAP@.75, AR@100 (`mar_100`) and mAP per class (`map_<class>`); all higher is better.

    Under DDP every rank's detections are gathered before computing (each image counted once); the count of
    labelled images is a summed state, so a split with none gives NaN (missing)."""

    def __init__(self, num_classes: int, class_names: list[str], decode_args: dict):
        self.num_classes, self.decode_args = num_classes, decode_args
        self.class_names = metric_safe(class_names)
        self.names = COCO_NAMES + tuple(f"map_{name}" for name in self.class_names)
        self.higher_is_better = dict.fromkeys(self.names, True)

    def reset(self, device):
        self.found, self.truths, self.order = [], [], []  # per image, on the device until compute
        self.seen = 0  # images of this rank so far, labelled or not
        self.images = torch.zeros(1, dtype=torch.long, device=device)

    def update(self, pred, target, mask):
        position = torch.arange(self.seen, self.seen + len(target))
        self.seen += len(target)
        if mask is not None:  # evaluation only: unlabelled images are not scored
            pred, target, position = pred[mask], target[mask], position[mask.cpu()]
        self.images += len(target)
        if len(target):
            self.found += decode(pred, self.num_classes, **self.decode_args)
            self.truths += target_boxes(target)
            self.order += position.tolist()

    def states(self):
        return [self.images]

    def compute(self):
        if int(self.images.item()) == 0:  # summed over ranks already: every rank returns here, or none does
            return self.missing()
        detection = import_extra("torchmetrics.detection", "detection", "a detection task's COCO metrics")
        cpu = [[{k: v.cpu() for k, v in d.items()} for d in part] for part in (self.found, self.truths)]
        # every rank's images, one all_gather_object: torchmetrics' own sync gathers its list states one tensor
        # at a time, which deadlocks when ranks hold different numbers of images (uneven evaluation shards)
        gathered = distributed.gather_objects([*cpu, self.order])
        # back in the split's order (rank r evaluates images r, r + W, ...: mtlrun.data.loading), so that
        # COCO's tie-breaking between equal scores, which follows the image order, is the one-process one
        world = len(gathered)
        images = sorted((rank + world * k, f, t) for rank, (found, truths, order) in enumerate(gathered)
                        for k, f, t in zip(order, found, truths))
        metric = detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                                backend="pycocotools", sync_on_compute=False)
        metric.update([f for _, f, _ in images], [t for _, _, t in images])
        values = metric.compute()
        out = {"map": values["map"], "map_50": values["map_50"], "map_75": values["map_75"],
               "mar_100": values["mar_100"]}
        out = {k: float(v) for k, v in out.items()}
        per_class = dict.fromkeys(self.class_names, math.nan)
        classes = values["classes"].view(-1).tolist()
        for c, ap in zip(classes, values["map_per_class"].view(-1).tolist()):
            if 0 <= c < self.num_classes and ap >= 0:  # -1: the class has no true box in the split
                per_class[self.class_names[c]] = ap
        out.update({f"map_{name}": v for name, v in per_class.items()})
        return {k: (math.nan if v < 0 else v) for k, v in out.items()}
