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
