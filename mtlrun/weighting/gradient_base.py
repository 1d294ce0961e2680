"""The base of the gradient-level methods: per-task gradients combined by a torchjd aggregator.

Each method is a file of its own (mgda.py, upgrad.py, ...) that subclasses `GradientAggregation` and says
which aggregator it uses (`make_aggregator`) and which solver packages that needs (`packages`); this
module is the Jacobian / Gramian machinery they share.

`grad_on` says with respect to what the per-task gradients are taken:
- parameters: the Jacobian of the losses with respect to `model.shared_parameters()`, through
  torchjd.autojac.mtl_backward (per-task backward through the heads to the shared representation, then
  the backward of those T rows through the shared trunk); each task's own parameters get their own
  task's gradient.
  A model with no shared representation (or one whose `shared` is not a cut of the graph) takes the
  same Jacobian with torchjd.autojac.jac from the losses directly.
- representation: gradients with respect to the shared representation only (one small backward per
  task through its head), aggregated there and backpropagated once through the shared trunk: MGDA-UB
  style, about the cost of static weighting. With several shared tensors (MTAN's stages) they are one
  long vector. Needs `model.has_shared_representation`.

How the aggregator is applied: what it needs is read from the aggregator itself (`needs_jacobian`), and any
torchjd aggregator works. Most are a weighting of the Gramian G = J J^T
(`GramianWeightedAggregator`): aggregate = w(G) @ J. We compute G block by block (no concatenated
Jacobian), take the weights on the host (T x T numbers; every one of these weightings runs a solver or a
Python loop and would synchronise anyway), and combine the rows of J on the device. That is what
`aggregator(J)` computes, and lets us
- hand the aggregator the true per-task gradients: the losses go through `scale` (1/accumulate and the
  fp16 loss scale s) before differentiation, so G is divided by s^2 before the weights are taken and
  the combination w @ J carries s on, as a scaled loss would (matters for the scale-dependent ones:
  FairGrad, Nash-MTL's norm cap);
- leave tasks without labels in the batch (a zero Jacobian row) out of the aggregation: the weights
  are taken on the Gramian of the labelled tasks, and the others get weight 0 (MGDA or CAGrad would
  otherwise return a zero update as soon as one task has no label);
- report the weights actually applied (`current_weights`).
Every other aggregator (GradDrop, ConFIG, TrimmedMean; Mean, Sum, Random, Constant, ExcessMTL, which weight
the Jacobian itself) gets the concatenated Jacobian of the true gradients (divided by s; its aggregate is
multiplied by s again) and takes zero rows as they are; a weighting of the Jacobian reports its weights,
the others a proxy weight, <aggregate, g_k> / ||g_k||^2.

Gradient accumulation (`trainer.accumulate=k`): the aggregator sees the whole window once, so k micro-batches
make the step of one k times larger batch. Each micro-batch's loss is its mean divided by k (`scale`), so
the window's per-task gradient is the sum of the micro-batches' scaled ones, and the sum of their `s` is
the factor that unscales it.
- parameters: the Jacobian blocks [T, P] are summed over the window and aggregated at its last micro-batch
  (memory: one T x P buffer held over the window, the size of one step's Jacobian);
- representation: a micro-batch's rows are gradients with respect to its own samples' representation, and
  the Gramian of the window's (concatenated) rows is the sum of the micro-batches' Gramians: they are
  summed, and the weights are taken once, on the last micro-batch. An earlier micro-batch's trunk graph is
  gone by then, so each earlier micro-batch backpropagates its T rows through the trunk one task at a time
  and keeps the per-task gradients of the shared parameters (a T x P buffer, and T trunk backwards instead
  of one, as at parameter level); the last micro-batch backpropagates its combined row once, and the kept
  per-task gradients are combined with the same weights. GradDrop and ConFIG need the whole Jacobian, not
  its Gramian: they refuse accumulation at representation level.

DDP: these methods differentiate more than once per step, which DDP's reducer does not allow; the
trainer runs them under no_sync() and averages the gradients itself (multi_backward). Either way every
rank aggregates the global batch's gradients (except a method that needs the Jacobian, GradDrop or ConFIG,
at representation level: its rows are per-sample, so each rank aggregates its own and the trainer averages the
results), so a run on W ranks equals one process on the whole batch:
at representation level the Gramian is summed over ranks (the rows are per-sample, so that is all the
ranks share); at parameter level the Jacobian blocks (T x P) are averaged over ranks before the
aggregator runs (T times the communication of a plain gradient all-reduce, the price of exactness: each
rank aggregating its own Jacobian and averaging the aggregates is a different update).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torchjd import aggregation
from torchjd.autojac import jac, mtl_backward

from mtlrun import distributed
from mtlrun.errors import UsageError
from mtlrun.weighting import graph
from mtlrun.weighting.base import GRAD_ON, Weighting, accumulate_grad, architecture_name, as_tensor_list

log = logging.getLogger("mtlrun")

SOLVERS_EXTRA = 'pip install "mtlrun[solvers]"'
VALID_AGGREGATOR = ("it must return an instance of a torchjd.aggregation.Aggregator, e.g. aggregation.UPGrad() or "
                    "aggregation.Mean(), or of a subclass of it")
JACOBIAN_AT_REPRESENTATION = ("at grad_on=representation needs the whole batch's Jacobian at once (its aggregator is "
                              "not a weighting of the Gramian, which micro-batches can sum); weighting.grad_on="
                              "parameters accumulates exactly")


def require_packages(method: str, packages: tuple[str, ...]) -> None:
    """Fail at config time, with the command that fixes it, when a solver the aggregator needs is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UsageError(f"weighting={method} needs the solver package(s) {', '.join(missing)}, which "
                         f"{'is' if len(missing) == 1 else 'are'} not installed. Install the solvers with: "
                         f"{SOLVERS_EXTRA}  (or: pip install {' '.join(missing)})")


def _chunk_size(tensors: list[torch.Tensor]) -> int | None:
    """torchjd's parallel_chunk_size for the Jacobian through the shared trunk.

    None (all T rows at once, through torch.vmap) on CUDA in full precision. 1 (one backward per task,
    in turn) elsewhere: on the CPU the vmapped convolution backward measured ~30% slower than the loop,
    and under autocast the vmapped BatchNorm backward fails on its mixed dtypes.
    """
    fast = all(t.device.type == "cuda" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    return None if fast else 1


def _gramian(blocks: list[torch.Tensor]) -> torch.Tensor:
    """J J^T of the Jacobian given as blocks [T, ...], without concatenating them."""
    return sum(b.flatten(1).float() @ b.flatten(1).float().T for b in blocks)


class GradientAggregation(Weighting):
    """Base of the gradient-level methods. A subclass gives:

    - `make_aggregator(num_tasks)`: its torchjd aggregator (called once, at set-up);
    - `packages`: the import names of the optional solver packages that aggregator needs (checked at
      config time, with the pip command in the error);
    and may override `solve` (the weights from the labelled tasks' Gramian: stateful or capped weightings)
    or `combine_matrix` (aggregators that need the Jacobian itself), and keep state across steps with
    `get_extra_state` / `set_extra_state` (it then goes into checkpoints).
    """

    weights_at_window_end = True
    needs_shared = True  # at parameter level too: mtl_backward starts from the shared representation
    multi_backward = True
    grad_on_levels = GRAD_ON
    # The aggregator needs the Jacobian, not its Gramian: read from it at set-up. A class may declare it, so that
    # trainer.accumulate>1 at representation level is refused at config time, not at the first step (GradDrop).
    needs_jacobian = False
    packages: tuple[str, ...] = ()  # import names of the optional solver packages the aggregator needs

    def __init__(self, grad_on: str = "parameters"):
        super().__init__()
        self.grad_on = self.check_grad_on(grad_on)
        require_packages(self.method_name(), self.packages)

    def make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        raise UsageError(f"weighting={self.method_name()}: {type(self).__name__} defines no "
                         f"make_aggregator(num_tasks); {VALID_AGGREGATOR}")

    @classmethod
    def accumulation_problem(cls, grad_on=None):
        if grad_on == "representation" and cls.needs_jacobian:
            return JACOBIAN_AT_REPRESENTATION
        return None

    def start_micro_batch(self, first, last):
        super().start_micro_batch(first, last)
        if first and not last:  # a window of several micro-batches opens
            self._refuse_window()

    def _refuse_window(self) -> None:
        if self.grad_on == "representation" and self.needs_jacobian:  # a window sums Gramians, not Jacobians
            raise UsageError(f"trainer.accumulate>1: weighting={self.method_name()} {JACOBIAN_AT_REPRESENTATION}; "
                             f"or use trainer.accumulate=1 with a larger data.batch_size")

    # ----------------------------------------------------------------------------------------- set-up
    def setup(self, tasks, model):
        super().setup(tasks, model)
        T = len(self.task_names)
        method = self.method_name()
        arch = architecture_name(model)
        has_representation = bool(getattr(model, "has_shared_representation", True))
        if self.grad_on == "representation" and not has_representation:
            raise UsageError(f"weighting.grad_on=representation: the architecture {arch} has no shared "
                             f"representation (no tensor that all tasks read), so weighting={method} "
                             f"cannot work on it; use weighting.grad_on=parameters")
        self.needs_shared = has_representation
        self.arch = arch
        self.shared_params = [p for p in model.shared_parameters() if p.requires_grad]
        self.task_params = [[p for p in model.task_parameters(t) if p.requires_grad] for t in self.task_names]
        self.all_task_params = list({id(p): p for params in self.task_params for p in params}.values())
        if not self.shared_params:
            log.warning(f"weighting={method}: the architecture {arch} shares no parameter, so every "
                        f"task's gradient reaches only its own parameters and there is nothing to aggregate: "
                        f"this trains like weighting=static with unit weights")
        object.__setattr__(self, "aggregator", self._built_aggregator(T))  # not a submodule: it stays on the host
        self.needs_jacobian = self._needs_jacobian()
        self._cut: bool | None = None  # whether `shared` is a cut of the graph (checked on the first step)
        self.register_buffer("weights", torch.ones(T), persistent=False)
        self.register_buffer("one", torch.ones(()), persistent=False)
        self._window: dict | None = None  # what the accumulation window has gathered (see `end_window`)

    def _built_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        """`make_aggregator`'s torchjd aggregator; a usage error, at set-up, for anything else."""
        method = self.method_name()
        try:
            aggregator = self.make_aggregator(num_tasks)
        except ImportError as exc:  # a solver that find_spec saw but that does not import
            raise UsageError(f"weighting={method}: {exc}. Install the solvers with: {SOLVERS_EXTRA}") from exc
        except ValueError as exc:  # torchjd's own checks of the hyperparameters
            raise UsageError(f"weighting={method}: {exc}") from exc
        if not isinstance(aggregator, aggregation.Aggregator):
            got = "None" if aggregator is None else f"a {type(aggregator).__name__}"
            raise UsageError(f"weighting={method}: make_aggregator({num_tasks}) returned {got}, not a torchjd "
                             f"aggregator; {VALID_AGGREGATOR}")
        return aggregator

    def _needs_jacobian(self) -> bool:
        """Whether the weights cannot be taken from the Gramian: the aggregator is not a weighting of its Gramian,
        and the method does not take them from it itself (Nash-MTL's `solve`)."""
        from_gramian = type(self).solve is not GradientAggregation.solve
        return not (from_gramian or isinstance(self.aggregator, aggregation.GramianWeightedAggregator))

    # -------------------------------------------------------------------------------------- the step
    def backward(self, losses, *, scale, shared=None, extra=None):
        scaled = [scale(losses[t]) for t in self.task_names]
        s = scale(self.one)  # the factor `scale` applies, to unscale the Gramian
        if extra is not None:  # its own backward, so its gradient is added exactly once
            scale(extra).backward(retain_graph=True)
        shared = [t for t in as_tensor_list(shared) if t.requires_grad]
        if not self.shared_params:
            torch.stack(scaled).sum().backward()
        elif self.grad_on == "representation":
            self._representation_step(scaled, shared, s)
        elif shared and self._is_cut(scaled, shared):
            self._parameter_step(scaled, shared, s)
        else:
            self._parameter_step_from_losses(scaled, s)
        objective = torch.stack([losses[t].detach().float() for t in self.task_names]).sum()
        return objective + extra.detach() if extra is not None else objective

    def current_weights(self):
        return self.weights

    def _is_cut(self, scaled, shared) -> bool:
        if self._cut is None:
            self._cut = not graph.reaches_around(scaled, shared, self.shared_params)
            if not self._cut and self.grad_on == "parameters":
                log.warning(f"weighting={self.method_name()}: {self.arch}'s task losses reach shared parameters "
                            f"other than through its shared representation (or the model is compiled: "
                            f"trainer.compile=true); taking the Jacobian from the losses instead (correct, "
                            f"a little slower)")
        return self._cut

    def _representation_step(self, scaled, shared, s):
        if not shared:
            raise UsageError(f"weighting.grad_on=representation: {self.arch} returned no shared "
                             f"representation that requires grad (shared=None); use "
                             f"weighting.grad_on=parameters")
        if not self._is_cut(scaled, shared):
            raise UsageError(f"weighting.grad_on=representation: {self.arch}'s task losses depend on shared "
                             f"parameters other than through the shared representation it returns (or the "
                             f"model is compiled, trainer.compile=true, which hides it inside one graph node), "
                             f"so gradients with respect to it would miss those paths; use "
                             f"weighting.grad_on=parameters or trainer.compile=false")
        n = len(shared)
        rows: list[list[torch.Tensor]] = [[] for _ in shared]
        for loss, params in zip(scaled, self.task_params):  # one small backward per task, through its head
            grads = torch.autograd.grad(loss, [*shared, *params], retain_graph=True, allow_unused=True)
            for row, g, x in zip(rows, grads[:n], shared):
                row.append(torch.zeros_like(x) if g is None else g)
            for p, g in zip(params, grads[n:]):
                accumulate_grad(p, torch.zeros_like(p) if g is None else g)
        blocks = [torch.stack(row) for row in rows]
        if self.last_micro_batch and self._window is None:  # a whole step (no accumulation)
            combined = self._combine(blocks, s, whole_batch=True)
            torch.autograd.backward(shared, grad_tensors=combined)  # once through the shared trunk
            return
        self._refuse_window()  # start_micro_batch refuses it before the window's first step
        window = self._window or {"s": torch.zeros_like(s), "gramian": 0, "task_grads": None}
        window["s"] = window["s"] + s
        window["gramian"] = window["gramian"] + _gramian(blocks)
        self._window = window
        if not self.last_micro_batch:  # the weights come at the window's end: keep each task's trunk gradient
            if window["task_grads"] is None:
                window["task_grads"] = [torch.zeros((len(self.task_names), *p.shape), dtype=p.dtype, device=p.device)
                                        for p in self.shared_params]
            self._add_trunk_gradients(shared, blocks, window["task_grads"])
            return
        weights = self._window_weights()  # this micro-batch's trunk graph is still there: one backward
        torch.autograd.backward(shared, grad_tensors=[torch.tensordot(weights.to(b.dtype), b, dims=1)
                                                      for b in blocks])

    def _add_trunk_gradients(self, shared, blocks, into: list[torch.Tensor]) -> None:
        """into[i][t] += task t's row backpropagated through the trunk to shared parameter i (one backward
        per task, in turn: the graph is freed by the last)."""
        last = len(self.task_names) - 1
        for t in range(len(self.task_names)):
            rows = [b[t] for b in blocks]
            task = torch.autograd.grad(shared, self.shared_params, grad_outputs=rows, retain_graph=t < last,
                                       allow_unused=True)
            for out, g in zip(into, task):
                if g is not None:
                    out[t] += g

    def _window_weights(self) -> torch.Tensor:
        """End of a representation-level window: the weights from the summed Gramian, applied to the kept
        per-task trunk gradients of the earlier micro-batches; the window is closed."""
        window, self._window = self._window, None
        self.weights = self._gramian_weights(window["gramian"], window["s"], whole_batch=True)
        for p, kept in zip(self.shared_params, window["task_grads"] or ()):
            accumulate_grad(p, torch.tensordot(self.weights.to(kept.dtype), kept, dims=1))
        return self.weights

    def end_window(self) -> None:
        """The window's last micro-batch was skipped (non-finite loss): aggregate what the others gathered."""
        if self._window is None:
            return
        if "blocks" in self._window:
            window, self._window = self._window, None
            self._apply_blocks(window["blocks"], window["s"])
        else:
            self._window_weights()

    def _parameter_step(self, scaled, shared, s):
        try:
            mtl_backward(scaled, features=shared, tasks_params=self.task_params, shared_params=self.shared_params,
                         parallel_chunk_size=_chunk_size(shared))
            blocks = [p.jac for p in self.shared_params]
        finally:
            for p in self.shared_params:
                if hasattr(p, "jac"):
                    del p.jac
        self._parameter_blocks(blocks, s)

    def _parameter_step_from_losses(self, scaled, s):
        task_params = self.all_task_params
        # chunk 1: with no shared representation to look at, the graph's precision is unknown
        blocks = list(jac(scaled, self.shared_params, retain_graph=bool(task_params), parallel_chunk_size=1))
        if task_params:  # each task's parameters get their own task's gradient (heads are disjoint)
            torch.autograd.backward(torch.stack(scaled).sum(), inputs=task_params)
            for p in task_params:
                if p.grad is None:  # unused this step; a zero keeps DDP's manual all-reduce aligned
                    p.grad = torch.zeros_like(p)
        self._parameter_blocks(blocks, s)

    def _parameter_blocks(self, blocks: list[torch.Tensor], s: torch.Tensor) -> None:
        """Aggregate the shared parameters' Jacobian now, or add it to the window's if more micro-batches follow."""
        window = self._window
        if window is not None:
            for kept, b in zip(window["blocks"], blocks):
                kept.add_(b)
            window["s"] = window["s"] + s
            blocks, s = window["blocks"], window["s"]
        if not self.last_micro_batch:
            self._window = window or {"blocks": blocks, "s": s}
            return
        self._window = None
        self._apply_blocks(blocks, s)

    def _apply_blocks(self, blocks: list[torch.Tensor], s: torch.Tensor) -> None:
        for p, g in zip(self.shared_params, self._combine(blocks, s)):
            accumulate_grad(p, g)

    # ------------------------------------------------------------------------------ the aggregation
    def _combine(self, blocks: list[torch.Tensor], s: torch.Tensor, whole_batch: bool = False) -> list[torch.Tensor]:
        """The aggregate of the Jacobian given as blocks [T, ...] (scaled by s), as blocks of the same shapes."""
        if not whole_batch:  # parameter level: the global batch's Jacobian
            distributed.reduce_over_ranks_(blocks, "mean")
        if self.needs_jacobian:
            return self.combine_matrix(blocks, s)
        self.weights = self._gramian_weights(_gramian(blocks), s, whole_batch)
        return [torch.tensordot(self.weights.to(b.dtype), b, dims=1) for b in blocks]

    def _gramian_weights(self, gramian: torch.Tensor, s: torch.Tensor, whole_batch: bool) -> torch.Tensor:
        """The weights of the Gramian of the Jacobian scaled by s (that of the true gradients is G / s^2)."""
        if whole_batch and distributed.world_size() > 1:  # representation level: the global batch's Gramian
            gramian = distributed.reduce_over_ranks_([gramian])[0] / distributed.world_size() ** 2
        return self._weights(gramian / (s * s))

    def _weights(self, gramian: torch.Tensor) -> torch.Tensor:
        host = gramian.detach().to("cpu", torch.float64)  # the one transfer of the step (T x T)
        if not bool(torch.isfinite(host).all()):
            # non-finite gradients: pass them on unweighted, so the fp16 scaler skips this step and a
            # fp32 run stops at its non-finite-loss check, instead of a solver failing on NaN
            weights = torch.ones(len(host), dtype=torch.float64)
        else:
            weights = self.solve(host, host.diagonal() > 0)
        return weights.to(device=gramian.device, dtype=torch.float32, non_blocking=True)

    def solve(self, gramian: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """The weights of the labelled tasks, from their sub-Gramian (host tensors); 0 for the others."""
        weighting = self.aggregator.gramian_weighting
        if bool(labelled.all()):
            return weighting(gramian)
        weights = torch.zeros(len(gramian), dtype=gramian.dtype)
        index = labelled.nonzero().squeeze(1)
        if len(index):
            weights[index] = weighting(gramian[index][:, index])
        return weights

    def combine_matrix(self, blocks: list[torch.Tensor], s: torch.Tensor) -> list[torch.Tensor]:
        """Aggregators that need the Jacobian itself: they get the true gradients (the rows divided by s) and their
        aggregate is scaled by s again, as the gradient of a scaled loss. A weighting of the Jacobian (Mean, Sum,
        ExcessMTL, ...) logs its weights (0 for a task without labels), any other aggregator (GradDrop, ConFIG,
        TrimmedMean) the proxy <aggregate, g_k> / ||g_k||^2."""
        matrix = torch.cat([b.flatten(1).float() for b in blocks], dim=1)
        squared = (matrix * matrix).sum(dim=1)
        if isinstance(self.aggregator, aggregation.WeightedAggregator):
            weights = self.aggregator.weighting(matrix / s).to(matrix.dtype)
            aggregate = weights @ matrix
            self.weights = torch.where(squared > 0, weights, torch.zeros_like(weights))
        else:
            aggregate = self.aggregator(matrix / s) * s
            projected = matrix @ aggregate
            self.weights = torch.where(squared > 0, projected / squared.clamp_min(1e-30), torch.zeros_like(squared))
        sizes = [b[0].numel() for b in blocks]
        return [g.view_as(b[0]).to(b.dtype) for g, b in zip(aggregate.split(sizes), blocks)]
