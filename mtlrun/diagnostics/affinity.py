"""Lookahead inter-task affinity (Fifty et al., 2021, "Efficiently Identifying Task Groupings for Multi-Task
Learning", TAG) and the task groupings it suggests.

Affinity of task i onto task j at one step: take a plain gradient step on the shared parameters with task
i's loss alone, θ'_s = θ_s - lr ∇_{θ_s} L_i, and see how task j's loss on the same batch changes:

    Z[i, j] = 1 - L_j(θ'_s, θ_j) / L_j(θ_s, θ_j)

Z > 0: a step for i lowers j's loss (i helps j); Z < 0: it raises it (the two conflict). Both losses are
measured in eval mode (BatchNorm's running statistics, no dropout), so the ratio compares the same function
of the parameters and the lookahead leaves no trace in the model. The matrix is the mean over the measured
steps; it stays on the device until the end. A cell is measured at a step only where the batch has a label
for i (else its step is no step) and j's loss is finite and > 0 (else the ratio means nothing); a cell never
measured is NaN. A lookahead that makes a finite loss non-finite is counted apart (`nonfinite_cells`): the
step size is too large for the ratio to mean anything.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from torch.func import functional_call

from mtlrun.engine.train_sums import labelled_tasks


class AffinityMeter:
    """Accumulates Z over steps for `model` (a MultiTaskModel) and `tasks` ({name: task})."""

    def __init__(self, model: torch.nn.Module, tasks: dict, lr: float, device: torch.device):
        if not lr > 0:
            raise ValueError(f"lookahead lr must be > 0, got {lr}")
        self.model, self.tasks, self.lr = model, tasks, float(lr)
        self.names = list(tasks)
        named = dict(model.named_parameters())
        shared_ids = {id(p) for p in model.shared_parameters()}
        self.shared = {n: p for n, p in named.items() if id(p) in shared_ids and p.requires_grad}
        if not self.shared:
            raise ValueError("the model has no shared parameters: there is no shared step whose effect on the "
                             "other tasks could be measured")
        n = len(self.names)
        self.sum = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.count = torch.zeros(n, n, dtype=torch.float64, device=device)  # steps that measured each cell
        self.nonfinite = torch.zeros(n, n, dtype=torch.bool, device=device)
        self._ones = torch.ones(n, device=device)
        self.steps = 0

    def _losses(self, batch: dict, params: dict | None = None) -> torch.Tensor:
        inputs, targets = batch["inputs"], batch["targets"]
        masks = batch.get("label_mask", {})
        kwargs = {"modality_mask": batch.get("modality_mask")}
        if params is None:
            preds = self.model(inputs, **kwargs)
        else:
            preds = functional_call(self.model, params, (inputs,), kwargs, strict=False)
        return torch.stack([self.tasks[t].loss(preds[t], targets[t], masks.get(t)).float() for t in self.names])

    def measure(self, batch: dict) -> None:
        """One lookahead per task on `batch` (already on the device). The model's mode is restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            losses = self._losses(batch)
            shared = list(self.shared.values())
            grads = [torch.autograd.grad(losses[i], shared, retain_graph=i + 1 < len(self.names),
                                         allow_unused=True) for i in range(len(self.names))]
            with torch.no_grad():
                before = losses.detach()
                rows = []
                for task_grads in grads:
                    stepped = {n: p - self.lr * g if g is not None else p
                               for (n, p), g in zip(self.shared.items(), task_grads)}
                    rows.append(1.0 - self._losses(batch, stepped) / before)
                z = torch.stack(rows).double()
                labelled = labelled_tasks(batch, self.names, self._ones).bool()
                measured = labelled[:, None] & (torch.isfinite(before) & (before > 0))[None, :]
                self.nonfinite |= measured & ~torch.isfinite(z)
                measured &= torch.isfinite(z)
                self.sum += torch.where(measured, z, 0.0)
                self.count += measured
                self.steps += 1
        finally:
            self.model.train(was_training)

    def matrix(self) -> list[list[float]]:
        """The mean Z over the steps that measured each cell (one host read); NaN where none did."""
        if self.steps == 0:
            raise ValueError("no step was measured")
        return torch.where(self.count > 0, self.sum / self.count.clamp_min(1), math.nan).tolist()

    def nonfinite_cells(self) -> list[tuple[str, str]]:
        """(i, j) where a step on task i made j's finite loss non-finite, at any measured step (one host read)."""
        return [(self.names[i], self.names[j]) for i, j in self.nonfinite.nonzero().tolist()]


def partitions(items: list, k: int):
    """Every way to split `items` into exactly k non-empty groups (order of groups and within them ignored)."""
    if k == 1:
        yield [list(items)]
        return
    if len(items) == k:
        yield [[x] for x in items]
        return
    if len(items) < k or k < 1:
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest, k - 1):  # `first` alone
        yield [[first], *smaller]
    for same in partitions(rest, k):  # `first` joins one of the k groups
        for i in range(len(same)):
            yield [*same[:i], [first, *same[i]], *same[i + 1:]]


def grouping_score(groups: list[list[int]], z: list[list[float]]) -> float:
    """TAG's total affinity of a grouping: for each task, the mean affinity onto it from the other tasks of its
    group (0 for a task alone; a cell never measured, NaN, left out), summed over tasks."""
    total = 0.0
    for group in groups:
        for j in group:
            others = [z[i][j] for i in group if i != j and not math.isnan(z[i][j])]  # NaN: never measured
            if others:
                total += sum(others) / len(others)
    return total


MAX_EXHAUSTIVE_TASKS = 10  # S(10, k) <= 42,525 partitions: a second; 12 tasks would be millions


def best_groupings(names: list[str], z: list[list[float]], k: int, top: int = 3) -> list[tuple[float, list]]:
    """The `top` partitions of the tasks into k groups by total affinity, best first: [(score, [[names]])]."""
    n = len(names)
    if not 1 <= k <= n:
        raise ValueError(f"groups must be between 1 and the number of tasks ({n}), got {k}")
    if n > MAX_EXHAUSTIVE_TASKS:
        raise ValueError(f"{n} tasks: suggesting groupings searches every partition, which is feasible up to "
                         f"{MAX_EXHAUSTIVE_TASKS} tasks; the affinity matrix itself is still written")
    scored = [(grouping_score(p, z), p) for p in partitions(list(range(n)), k)]
    scored = [s for s in scored if not math.isnan(s[0])]
    scored.sort(key=lambda s: -s[0])
    return [(score, [[names[i] for i in g] for g in p]) for score, p in scored[:top]]


def lowest_pair(names: list[str], z: list[list[float]]) -> tuple[str, str, float]:
    """The pair of tasks with the lowest symmetric affinity (Z[i,j] + Z[j,i]) / 2: the strongest conflict."""
    pairs = [((z[i][j] + z[j][i]) / 2, names[i], names[j]) for i, j in itertools.combinations(range(len(names)), 2)]
    pairs = [p for p in pairs if not math.isnan(p[0])] or pairs
    value, a, b = min(pairs)
    return a, b, value


def format_matrix(names: list[str], z: list[list[float]]) -> str:
    width = max(10, *(len(n) for n in names)) + 2  # "+1.24e-05" is 9 wide
    head = "step on \\ loss of".ljust(width + 9) + "".join(n.rjust(width) for n in names)
    rows = [head] + [names[i].ljust(width + 9) + "".join(f"{v:+.3g}".rjust(width) if i != j else "—".rjust(width)
                                                          for j, v in enumerate(row)) for i, row in enumerate(z)]
    return "\n".join(rows)


SYMLOG_SPAN = 100.0  # |Z| spanning more than this factor: a symmetric log colour scale, else the small cells look 0


def build_affinity_figure(names: list[str], z: list[list[float]], title: str = ""):
    """A heatmap of Z: rows are the task whose step is taken, columns the task whose loss changes; a diverging
    colour map centred at 0 (blue helps, red hurts), each cell annotated, the diagonal left blank. When |Z|
    spans more than SYMLOG_SPAN (one task's raw loss scale often makes its row 1000x the rest), the colours
    are symmetric-log, linear within the smallest nonzero |Z|, so small affinities keep their sign's colour."""
    from matplotlib.colors import Normalize, SymLogNorm

    from mtlrun.engine.plots import pyplot

    plt = pyplot()
    n = len(names)
    values = [[float("nan") if i == j else z[i][j] for j in range(n)] for i in range(n)]
    finite = [abs(v) for row in values for v in row if not math.isnan(v)]
    bound = max(finite) if finite and max(finite) > 0 else 1.0
    smallest = min((v for v in finite if v > 0), default=bound)
    symlog = bound / smallest > SYMLOG_SPAN
    norm = (SymLogNorm(linthresh=smallest, vmin=-bound, vmax=bound, base=10) if symlog
            else Normalize(vmin=-bound, vmax=bound))
    size = 1.2 + 0.9 * n
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, cmap="RdBu", norm=norm)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("loss of task j")
    ax.set_ylabel("step on task i")
    for i in range(n):
        for j in range(n):
            if i != j:
                dark = abs(norm(z[i][j]) - 0.5) > 0.3  # far from the white centre of the colour map
                ax.text(j, i, f"{z[i][j]:+.2g}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    scale = " (symmetric log scale)" if symlog else ""
    fig.colorbar(image, ax=ax, label=f"affinity 1 - L_j(after i's step) / L_j (> 0: i helps j){scale}")
    ax.set_title(title or "lookahead task affinity (TAG)")
    fig.tight_layout()
    return fig


def plot_affinity(names: list[str], z: list[list[float]], path: Path, title: str = "") -> None:
    from mtlrun.engine.plots import save_figure

    save_figure(build_affinity_figure(names, z, title), path)
