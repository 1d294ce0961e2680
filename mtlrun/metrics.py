"""Per-task metrics built from sufficient statistics (confusion counts, error sums).

Every accumulator keeps its state as tensors on the training device and is updated without a host sync;
`compute()` is the only place values reach the CPU. Under DDP the states are summed across ranks before
`compute()`, and since the evaluation shards never pad or overlap, each sample is counted exactly once.
"""

from __future__ import annotations

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
        raise NotImplementedError


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
        tp = cm.diag()
        support, predicted = cm.sum(1), cm.sum(0)
        f1 = 2 * tp / (support + predicted).clamp_min(1)
        present = (support + predicted) > 0  # classes never seen nor predicted don't dilute macro-F1
        return {"accuracy": (tp.sum() / total.clamp_min(1)).item(),
                "macro_f1": (f1[present].mean() if present.any() else f1.sum()).item()}


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
        accuracy = (tp + tn).sum() / (tp + fp + fn + tn).sum().clamp_min(1)
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
        n = max(n, 1.0)
        return {"mae": abs_sum / n, "rmse": (sq_sum / n) ** 0.5}


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
