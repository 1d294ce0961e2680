"""Gradient conflict between tasks, measured at the shared representation (`trainer.conflict=true`).

At a measured step, each task's loss is differentiated with respect to the shared representation alone
(its gradient wrt the shared parameters is this one backpropagated through the encoder, so the
representation is where the tasks meet; heads are cheap to differentiate through). From the per-task
gradients g_t (flattened over the batch):

- cos(a, b) = <g_a, g_b> / (|g_a| |g_b|) for every pair: < 0 means a step for a raises b's loss;
- the fraction of pairs with cos < 0;
- each task's gradient norm over the mean norm of all tasks (which task's gradient dominates the update).

A task without a label in the batch has a zero gradient there: no measurement, so it is left out of that
step's statistics (its pairs, the fraction, the mean norm), and a value with no measurement in an epoch is
NaN (an empty cell), never a 0 that looks like orthogonal gradients. Everything, counts included, is summed
on the device and read once per epoch, where the Trainer writes the means into the epoch's train row
(metrics.csv). Under DDP each rank measures its own batch and the sums are averaged
across ranks at the end of the epoch. Weighting-independent: it looks at the raw task losses, before any
weighting or aggregation changes them.
"""

from __future__ import annotations

import itertools
import math

import torch

from mtlrun import distributed


def pair_name(a: str, b: str) -> str:
    return f"conflict/cos/{a}~{b}"


class ConflictMeter:
    def __init__(self, task_names: list[str], device: torch.device):
        self.names = list(task_names)
        self.pairs = list(itertools.combinations(range(len(self.names)), 2))
        # the same pairs, in the same (row-major) order, as index tensors: one gather per measured step
        self._rows, self._cols = torch.triu_indices(len(self.names), len(self.names), 1, device=device)
        # cos per pair, conflicting-pair fraction, relative norm per task; and how many steps measured each
        size = len(self.pairs) + 1 + len(self.names)
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)
        self.counts = torch.zeros(size, dtype=torch.float64, device=device)
        self._all = torch.ones(len(self.names), dtype=torch.bool, device=device)
        self.count = 0

    def measure(self, losses: dict[str, torch.Tensor], shared, labelled: torch.Tensor | None = None) -> None:
        """`shared`: the representation (a tensor, or a list of tensors for stage-wise archs) the losses were
        computed from, graph alive. `labelled`: per task (in task order, on the device), whether the batch had
        a label for it; None: every task had. Leaves the graph in place for the weighting's backward."""
        inputs = [s for s in (shared if isinstance(shared, (list, tuple)) else [shared]) if s.requires_grad]
        rows = []
        for t in self.names:
            grads = torch.autograd.grad(losses[t].float(), inputs, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1).double()
                                   for g, x in zip(grads, inputs)]))
        g = torch.stack(rows)  # tasks x features
        measured = self._all if labelled is None else labelled.to(torch.bool)
        norms = g.norm(dim=1)
        unit = g / norms.clamp_min(1e-30)[:, None]
        cos = unit @ unit.T
        pair_cos = cos[self._rows, self._cols]
        pair_measured = measured[self._rows] & measured[self._cols]
        n_pairs = pair_measured.sum()
        fraction = ((pair_cos < 0) & pair_measured).sum().double().view(1) / n_pairs.clamp_min(1)
        mean_norm = torch.where(measured, norms, 0).sum() / measured.sum().clamp_min(1)
        relative = norms / mean_norm.clamp_min(1e-30)
        valid = torch.cat([pair_measured, (n_pairs > 0).view(1), measured])
        self.sums += torch.where(valid, torch.cat([pair_cos, fraction, relative]), 0)
        self.counts += valid
        self.count += 1

    def epoch_row(self, dist: distributed.DistInfo | None = None) -> dict[str, float]:
        """The means since the last call (reset afterwards), averaged across ranks under DDP; NaN for a value
        no step measured (a task never labelled, no pair of labelled tasks); {} when no step was measured
        (e.g. an epoch shorter than the logging interval)."""
        totals = torch.cat([self.sums, self.counts, self.sums.new_tensor([float(self.count)])])
        if dist is not None and dist.enabled:
            distributed.reduce_over_ranks_([totals])
        size = len(self.sums)
        sums, counts, count = totals[:size], totals[size:-1], float(totals[-1])
        self.sums.zero_()
        self.counts.zero_()
        self.count = 0
        if count == 0:
            return {}
        means = torch.where(counts > 0, sums / counts.clamp_min(1), math.nan).tolist()
        n_pairs = len(self.pairs)
        row = {pair_name(self.names[i], self.names[j]): v for (i, j), v in zip(self.pairs, means[:n_pairs])}
        row["conflict/fraction"] = means[n_pairs]
        row.update({f"conflict/norm/{t}": v for t, v in zip(self.names, means[n_pairs + 1:])})
        return row
