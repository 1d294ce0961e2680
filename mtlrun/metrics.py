"""Per-task metrics built from sufficient statistics (confusion counts, error sums).

Every accumulator keeps its state as tensors on the training device and is updated without a host sync;
`compute()` is the only place values reach the CPU. Under DDP the states are summed across ranks before
`compute()`, and since the evaluation shards never pad or overlap, each sample is counted exactly once.

A split with nothing to measure (no labelled sample for the task, or no valid pixel) gives NaN for every
metric of the task: "missing", never a 0 that would look perfect for a lower-is-better metric. Every
definition, and how it compares with scikit-learn, torchmetrics and LibMTL: docs/metrics.md.
"""

from __future__ import annotations

import math

import torch


class Metrics:
    """Accumulates one task's metrics over an evaluation pass."""

    names: tuple[str, ...] = ()
    higher_is_better: dict[str, bool] = {}

    def reset(self, device: torch.device) -> None:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
        raise NotImplementedError

    def states(self) -> list[torch.Tensor]:
        """The tensors to sum across DDP ranks."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """The metrics of everything seen since `reset`; NaN for all of them when nothing was measured."""
        raise NotImplementedError

    def missing(self) -> dict[str, float]:
        return dict.fromkeys(self.names, math.nan)


class ClassificationMetrics(Metrics):
    names = ("accuracy", "macro_f1")
    higher_is_better = {"accuracy": True, "macro_f1": True}

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def reset(self, device):
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)

    def update(self, pred, target, mask):
        c = self.num_classes
        cell = target.long() * c + pred.argmax(dim=-1)
        if mask is not None:  # unlabelled samples go to an overflow bin that is dropped (no sync)
            cell = torch.where(mask, cell, c * c)
        self.confusion += torch.bincount(cell, minlength=c * c + 1)[: c * c].view(c, c)

    def states(self):
        return [self.confusion]

    def compute(self):
        cm = self.confusion.double()
        total = cm.sum()
        if total == 0:
            return self.missing()
        tp = cm.diag()
        support, predicted = cm.sum(1), cm.sum(0)
        f1 = 2 * tp / (support + predicted).clamp_min(1)
        present = (support + predicted) > 0  # classes never seen nor predicted don't dilute macro-F1
        return {"accuracy": (tp.sum() / total).item(), "macro_f1": f1[present].mean().item()}


class MultilabelMetrics(Metrics):
    """Binary (one label) and multilabel tasks: element accuracy and F1 macro-averaged over labels."""

    names = ("accuracy", "f1")
    higher_is_better = {"accuracy": True, "f1": True}

    def __init__(self, num_labels: int, threshold: float = 0.5):
        self.num_labels, self.threshold = num_labels, threshold

    def reset(self, device):
        self.counts = torch.zeros(4, self.num_labels, dtype=torch.long, device=device)  # tp, fp, fn, tn

    def update(self, pred, target, mask):
        p = (torch.sigmoid(pred.float()) >= self.threshold).view(len(pred), -1)
        t = target.view(len(target), -1) > 0.5
        w = torch.ones_like(p) if mask is None else mask.view(-1, 1).expand_as(p)
        self.counts += torch.stack([(p & t & w).sum(0), (p & ~t & w).sum(0),
                                    (~p & t & w).sum(0), (~p & ~t & w).sum(0)])

    def states(self):
        return [self.counts]

    def compute(self):
        tp, fp, fn, tn = self.counts.double()
        total = (tp + fp + fn + tn).sum()
        if total == 0:
            return self.missing()
        accuracy = (tp + tn).sum() / total
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        return {"accuracy": accuracy.item(), "f1": f1.mean().item()}


class RegressionMetrics(Metrics):
    names = ("mae", "rmse")
    higher_is_better = {"mae": False, "rmse": False}

    def __init__(self, dim: int):
        self.dim = dim

    def reset(self, device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # |e|, e^2, count of values

    def update(self, pred, target, mask):
        err = (pred.float().view(len(pred), -1) - target.float().view(len(target), -1)).double()
        if mask is not None:  # where, not multiply: an unlabelled NaN placeholder must not leak in
            err = torch.where(mask.view(-1, 1), err, 0.0)
            count = mask.sum() * err.shape[1]
        else:
            count = torch.tensor(err.numel(), device=err.device)
        self.sums += torch.stack([err.abs().sum(), err.square().sum(), count.double()])

    def states(self):
        return [self.sums]

    def compute(self):
        abs_sum, sq_sum, n = self.sums.tolist()
        if n == 0:
            return self.missing()
        return {"mae": abs_sum / n, "rmse": (sq_sum / n) ** 0.5}


# ------------------------------------------------------------------------------- dense (per-pixel)
# Dense predictions are [B, C, H, W] at the target's resolution; which pixels count is read from the
# target itself (see mtlrun.tasks: segmentation ignore_index, depth > 0, normals with a non-zero norm)
# and from the sample-level label mask.


def _exact_dtype(device: torch.device) -> torch.dtype:
    """Per-pixel errors are computed in float64 so sums are exact to ~1e-12; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _pixel_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The sample-level label mask [B] broadcast to the pixels of `like` [B, H, W]."""
    return None if mask is None else mask.view(-1, *[1] * (like.dim() - 1))


class SegmentationMetrics(Metrics):
    """Mean IoU and pixel accuracy from a C x C confusion matrix (rows: target, columns: prediction).

    The matrix is summed over the whole split (and across DDP ranks) before anything is divided, so mIoU
    is the split-level IoU of each class averaged over the classes that occur in the target or in the
    prediction anywhere in the split (a class absent from both has no IoU and is left out; LibMTL's mean
    would be NaN). Ignored pixels (target == ignore_index) and unlabelled samples are not counted. An
    `ignore_index` inside 0..C-1 is not a class (as torchmetrics): its pixels are skipped, it is left out of
    the mean, and predicting it is a miss for the pixel's true class (it is never a correct prediction).
    """

    names = ("miou", "pixel_accuracy")
    higher_is_better = {"miou": True, "pixel_accuracy": True}

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def reset(self, device):
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)

    def update(self, pred, target, mask):
        c = self.num_classes
        target = target.long()
        valid = target != self.ignore_index
        if mask is not None:
            valid &= _pixel_mask(mask, target)
        cell = target * c + pred.argmax(dim=1)
        cell = torch.where(valid, cell, c * c)  # overflow bin, dropped: no host sync, no boolean indexing
        self.confusion += torch.bincount(cell.flatten(), minlength=c * c + 1)[: c * c].view(c, c)

    def states(self):
        return [self.confusion]

    def compute(self):
        cm = self.confusion.double()
        if cm.sum() == 0:
            return self.missing()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        if 0 <= self.ignore_index < self.num_classes:  # its row is empty; its column: misses of other classes
            present[self.ignore_index] = False
        iou = tp[present] / union[present]
        return {"miou": iou.mean().item(),  # some non-ignored row is non-empty, so `present` is too
                "pixel_accuracy": (tp.sum() / cm.sum()).item()}


class DepthMetrics(Metrics):
    """Absolute and relative error over the valid pixels (target > 0) of the split.

    abs_err = mean |pred - gt|, rel_err = mean |pred - gt| / gt, both pooled over every valid pixel of the
    split (not averaged per batch or per image)."""

    names = ("abs_err", "rel_err")
    higher_is_better = {"abs_err": False, "rel_err": False}

    def reset(self, device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum |e|, sum |e| / gt, valid pixels

    def update(self, pred, target, mask):
        dtype = _exact_dtype(pred.device)
        target = target.to(dtype)
        valid = target > 0  # False for a NaN placeholder too
        if mask is not None:
            valid &= _pixel_mask(mask, target)
        gt = torch.where(valid, target, 1.0)
        err = torch.where(valid, (pred.to(dtype).view_as(gt) - gt).abs(), 0.0)
        self.sums += torch.stack([err.sum(dtype=torch.float64), (err / gt).sum(dtype=torch.float64),
                                  valid.sum().double()])

    def states(self):
        return [self.sums]

    def compute(self):
        abs_sum, rel_sum, n = self.sums.tolist()
        if n == 0:
            return self.missing()
        return {"abs_err": abs_sum / n, "rel_err": rel_sum / n}


class NormalsMetrics(Metrics):
    """Angular error (degrees) between the L2-normalised prediction and the target normal.

    Over every valid pixel (target norm > 0) of the split: `mean_angle`, `median_angle`, and the fractions
    of pixels with an error below 11.25, 22.5 and 30 degrees (`within_*`). The mean and the fractions are
    exact (sums and counts; each angle computed in float64, except on MPS, which has no float64: float32
    there, within ~2e-5 degree per pixel). The median comes from a histogram of the errors with
    BIN_DEGREES-wide bins over [0, 180] kept on the device, so it can be summed across batches and ranks:
    it is the lower median (the ((n - 1) // 2)-th smallest error, as torch.median) located to its bin and
    linearly interpolated within it, so it is within one bin (0.1 degree) of the exact value.
    """

    BIN_DEGREES = 0.1
    THRESHOLDS = (11.25, 22.5, 30.0)
    names = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
    higher_is_better = {"mean_angle": False, "median_angle": False, "within_11_25": True, "within_22_5": True,
                        "within_30": True}

    @property
    def num_bins(self) -> int:
        return round(180 / self.BIN_DEGREES)

    def reset(self, device):
        self.histogram = torch.zeros(self.num_bins, dtype=torch.long, device=device)
        # sum of angles, valid pixels, then one count per threshold
        self.sums = torch.zeros(2 + len(self.THRESHOLDS), dtype=torch.float64, device=device)

    def update(self, pred, target, mask):
        angle, valid = normal_angles(pred, target, mask)
        bins = (angle / self.BIN_DEGREES).long().clamp_(0, self.num_bins - 1)
        bins = torch.where(valid, bins, self.num_bins)  # overflow bin for invalid pixels, dropped
        self.histogram += torch.bincount(bins.flatten(), minlength=self.num_bins + 1)[: self.num_bins]
        angle = torch.where(valid, angle, 0.0)
        within = [(valid & (angle < t)).sum() for t in self.THRESHOLDS]
        self.sums += torch.stack([angle.sum(dtype=torch.float64), valid.sum(), *within]).double()

    def states(self):
        return [self.histogram, self.sums]

    def median_from_histogram(self) -> float:
        counts = self.histogram.double().cpu()
        n = counts.sum().item()
        if n == 0:
            return math.nan
        k = (n - 1) // 2  # 0-based rank of the lower median
        cumulative = counts.cumsum(0)
        b = int(torch.searchsorted(cumulative, torch.tensor(k + 1, dtype=torch.float64)).item())
        before = cumulative[b].item() - counts[b].item()
        return (b + (k - before + 0.5) / counts[b].item()) * self.BIN_DEGREES

    def compute(self):
        angle_sum, n, *within = self.sums.tolist()
        if n == 0:
            return self.missing()
        out = {"mean_angle": angle_sum / n, "median_angle": self.median_from_histogram()}
        out.update({name: count / n for name, count in zip(self.names[2:], within)})
        return out


def normal_angles(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None):
    """(angle in degrees [B, H, W], valid [B, H, W]) between pred [B, 3, H, W] and target, in float64.

    atan2(|p x t|, p . t) rather than acos of the normalised dot product: acos loses half the digits near
    0 and 180 degrees (float32: ~0.02 degree), atan2 is accurate at every angle and needs no normalisation.
    A zero prediction has angle 90 degrees (atan2(0, 0) = 0 would call it perfect)."""
    dtype = _exact_dtype(pred.device)
    target = target.to(dtype)
    valid = target.square().sum(1) > 0  # False for a NaN placeholder too
    if mask is not None:
        valid &= _pixel_mask(mask, valid)
    target = torch.where(valid.unsqueeze(1), target, 0.0)
    pred = pred.to(dtype)
    cross = torch.linalg.cross(pred, target, dim=1).square().sum(1).sqrt()
    dot = (pred * target).sum(1)
    angle = torch.rad2deg(torch.atan2(cross, dot))
    zero = pred.square().sum(1) == 0
    return torch.where(zero, 90.0, angle), valid


def delta_m(results: dict[str, float], baseline: dict[str, float], higher_is_better: dict[str, bool]) -> float:
    """Δm% of a multi-task model against single-task baselines (CAGrad / Nash-MTL / FAMO convention).

        Δm% = (1/K) Σ_k (-1)^δ_k (M_mtl,k - M_stl,k) / M_stl,k × 100,   δ_k = 1 where higher is better

    over the K metrics (the three dicts share their keys, e.g. "left/accuracy"). Lower is better: a
    negative Δm% means the multi-task model beats single-task training on average.
    """
    import math  # local: this function is appended to the module, whose imports stay as they are

    keys = set(results)
    if keys != set(baseline) or keys != set(higher_is_better):
        problems = []
        for name, other in (("baseline", baseline), ("higher_is_better", higher_is_better)):
            if set(other) - keys:
                problems.append(f"{name} has extra {sorted(set(other) - keys)}")
            if keys - set(other):
                problems.append(f"{name} lacks {sorted(keys - set(other))}")
        raise ValueError(f"delta_m: results, baseline and higher_is_better need the same metric keys; "
                         f"{'; '.join(problems)}")
    if not keys:
        raise ValueError("delta_m: no metrics given")
    total = 0.0
    for key in sorted(keys):
        mtl, stl = float(results[key]), float(baseline[key])
        if stl == 0:
            raise ValueError(f"delta_m: the baseline of {key!r} is 0, so its relative change is undefined")
        if not (math.isfinite(mtl) and math.isfinite(stl)):
            raise ValueError(f"delta_m: {key!r} is not finite (result {mtl}, baseline {stl})")
        sign = -1.0 if higher_is_better[key] else 1.0
        total += sign * (mtl - stl) / stl
    return 100.0 * total / len(keys)
