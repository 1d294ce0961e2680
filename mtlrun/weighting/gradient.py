"""Gradient-level methods: per-task gradients combined by a torchjd aggregator.

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

How the aggregator is applied. Most torchjd aggregators are a weighting of the Gramian G = J J^T
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
GradDrop and ConFIG are not weightings: they get the (concatenated, scaled) Jacobian, handle zero rows
by construction, and report a proxy weight, <aggregate, g_k> / ||g_k||^2.

DDP: these methods differentiate more than once per step, which DDP's reducer does not allow; the
trainer runs them under no_sync() and averages the gradients itself (multi_backward). At representation
level the Gramian is summed over ranks first, so every rank applies the weights of the global batch:
the result is exactly that of one process on the whole batch. At parameter level (and for GradDrop and
ConFIG) each rank aggregates its own Jacobian and the aggregates are averaged (all-reducing T x P
Jacobians would cost T times the communication).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings

import torch
from torchjd import aggregation
from torchjd.autojac import jac, mtl_backward
from torchjd.linalg import QuadprogProjector

from mtlrun import distributed
from mtlrun.errors import UsageError
from mtlrun.weighting import _graph
from mtlrun.weighting.base import (
    Weighting,
    accumulate_grad,
    architecture_name,
    as_tensor_list,
    check_grad_on,
)

log = logging.getLogger("mtlrun")

SOLVERS_EXTRA = 'pip install "mtlrun[solvers]"'


def require_packages(method: str, packages: tuple[str, ...]) -> None:
    """Fail at config time, with the command that fixes it, when a solver the aggregator needs is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UsageError(f"weighting={method} needs the solver package(s) {', '.join(missing)}, which "
                         f"{'is' if len(missing) == 1 else 'are'} not installed. Install the solvers with: "
                         f"{SOLVERS_EXTRA}  (or: pip install {' '.join(missing)})")


def _reduced_matrix(gramian: torch.Tensor) -> torch.Tensor:
    """A T x T matrix R with R R^T = gramian: stands in for J where only J's Gramian matters."""
    eigenvalues, vectors = torch.linalg.eigh(gramian)
    return vectors * eigenvalues.clamp_min(0).sqrt()


def _chunk_size(tensors: list[torch.Tensor]) -> int | None:
    """torchjd's parallel_chunk_size for the Jacobian through the shared trunk.

    None (all T rows at once, through torch.vmap) on CUDA in full precision. 1 (one backward per task,
    in turn) elsewhere: on the CPU the vmapped convolution backward measured ~30% slower than the loop,
    and under autocast the vmapped BatchNorm backward fails on its mixed dtypes.
    """
    fast = all(t.device.type == "cuda" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    return None if fast else 1


class GradientAggregation(Weighting):
    """Base of the gradient-level methods: subclasses say which torchjd aggregator and its solver packages."""

    needs_shared = True  # at parameter level too: mtl_backward starts from the shared representation
    multi_backward = True
    method = ""
    packages: tuple[str, ...] = ()  # import names of the optional solver packages the aggregator needs

    def __init__(self, grad_on: str = "parameters"):
        super().__init__()
        self.grad_on = check_grad_on(self.method, grad_on)
        require_packages(self.method, self.packages)

    def make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- set-up
    def setup(self, tasks, model):
        super().setup(tasks, model)
        T = len(self.task_names)
        arch = architecture_name(model)
        has_representation = bool(getattr(model, "has_shared_representation", True))
        if self.grad_on == "representation" and not has_representation:
            raise UsageError(f"weighting.grad_on=representation: the architecture {arch} has no shared "
                             f"representation (no tensor that all tasks read), so weighting={self.method} "
                             f"cannot work on it; use weighting.grad_on=parameters")
        self.needs_shared = has_representation
        self.arch = arch
        self.shared_params = [p for p in model.shared_parameters() if p.requires_grad]
        self.task_params = [[p for p in model.task_parameters(t) if p.requires_grad] for t in self.task_names]
        self.all_task_params = list({id(p): p for params in self.task_params for p in params}.values())
        if not self.shared_params:
            log.warning(f"weighting={self.method}: the architecture {arch} shares no parameter, so every "
                        f"task's gradient reaches only its own parameters and there is nothing to aggregate: "
                        f"this trains like weighting=static with unit weights")
        try:
            aggregator = self.make_aggregator(T)
        except ImportError as exc:  # a solver that find_spec saw but that does not import
            raise UsageError(f"weighting={self.method}: {exc}. Install the solvers with: {SOLVERS_EXTRA}") from exc
        except ValueError as exc:  # torchjd's own checks of the hyperparameters
            raise UsageError(f"weighting={self.method}: {exc}") from exc
        object.__setattr__(self, "aggregator", aggregator)  # not a submodule: it stays on the host
        self._cut: bool | None = None  # whether `shared` is a cut of the graph (checked on the first step)
        self.register_buffer("weights", torch.ones(T), persistent=False)
        self.register_buffer("one", torch.ones(()), persistent=False)

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
            self._cut = not _graph.reaches_around(scaled, shared, self.shared_params)
            if not self._cut and self.grad_on == "parameters":
                log.warning(f"weighting={self.method}: {self.arch}'s task losses reach shared parameters "
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
        combined = self._combine(blocks, s, whole_batch=True)
        torch.autograd.backward(shared, grad_tensors=combined)  # once through the shared trunk

    def _parameter_step(self, scaled, shared, s):
        try:
            mtl_backward(scaled, features=shared, tasks_params=self.task_params, shared_params=self.shared_params,
                         parallel_chunk_size=_chunk_size(shared))
            blocks = [p.jac for p in self.shared_params]
        finally:
            for p in self.shared_params:
                if hasattr(p, "jac"):
                    del p.jac
        for p, g in zip(self.shared_params, self._combine(blocks, s)):
            accumulate_grad(p, g)

    def _parameter_step_from_losses(self, scaled, s):
        task_params = self.all_task_params
        # chunk 1: with no shared representation to look at, the graph's precision is unknown
        blocks = list(jac(scaled, self.shared_params, retain_graph=bool(task_params), parallel_chunk_size=1))
        if task_params:  # each task's parameters get their own task's gradient (heads are disjoint)
            torch.autograd.backward(torch.stack(scaled).sum(), inputs=task_params)
            for p in task_params:
                if p.grad is None:  # unused this step; a zero keeps DDP's manual all-reduce aligned
                    p.grad = torch.zeros_like(p)
        for p, g in zip(self.shared_params, self._combine(blocks, s)):
            accumulate_grad(p, g)

    # ------------------------------------------------------------------------------ the aggregation
    def _combine(self, blocks: list[torch.Tensor], s: torch.Tensor, whole_batch: bool = False) -> list[torch.Tensor]:
        """The aggregate of the Jacobian given as blocks [T, ...] (scaled by s), as blocks of the same shapes."""
        if not isinstance(self.aggregator, aggregation.WeightedAggregator):
            return self._combine_matrix(blocks)
        gramian = sum(b.flatten(1).float() @ b.flatten(1).float().T for b in blocks)
        if whole_batch and distributed.world_size() > 1:  # representation level: the global batch's Gramian
            distributed.all_reduce_([gramian])
            gramian = gramian / distributed.world_size() ** 2
        self.weights = self._weights(gramian / (s * s))
        return [torch.tensordot(self.weights.to(b.dtype), b, dims=1) for b in blocks]

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

    def _combine_matrix(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Aggregators that need the Jacobian itself (GradDrop, ConFIG); both are scale-equivariant."""
        matrix = torch.cat([b.flatten(1).float() for b in blocks], dim=1)
        aggregate = self.aggregator(matrix)
        squared = (matrix * matrix).sum(dim=1)
        projected = matrix @ aggregate
        self.weights = torch.where(squared > 0, projected / squared.clamp_min(1e-30), torch.zeros_like(squared))
        sizes = [b[0].numel() for b in blocks]
        return [g.view_as(b[0]).to(b.dtype) for g, b in zip(aggregate.split(sizes), blocks)]


# ------------------------------------------------------------------------------------------- methods
class MGDA(GradientAggregation):
    """MGDA (Désidéri 2012) with the Frank-Wolfe solver of Sener & Koltun 2018: the minimum-norm point of
    the convex hull of the task gradients (at grad_on=representation: MGDA-UB)."""

    method = "mgda"

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.epsilon, self.max_iters = float(epsilon), int(max_iters)

    def make_aggregator(self, num_tasks):
        return aggregation.MGDA(epsilon=self.epsilon, max_iters=self.max_iters)


class PCGrad(GradientAggregation):
    """PCGrad (Yu et al. 2020): project each gradient on the normal plane of the ones it conflicts with."""

    method = "pcgrad"

    def make_aggregator(self, num_tasks):
        return aggregation.PCGrad()


class GradVac(GradientAggregation):
    """GradVac (Wang et al. 2021): like PCGrad, towards an EMA target of each pair's cosine similarity.

    Stateful: the EMA targets are in the checkpoint. A task without labels keeps its targets that step.
    """

    method = "gradvac"

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.beta, self.eps = float(beta), float(eps)

    def make_aggregator(self, num_tasks):
        aggregator = aggregation.GradVac(beta=self.beta, eps=self.eps)
        aggregator.gramian_weighting._ensure_state(num_tasks, torch.float64)  # the host dtype of `solve`
        return aggregator

    @property
    def _phi(self) -> torch.Tensor:
        return self.aggregator.gramian_weighting._phi_t

    def solve(self, gramian, labelled):
        before = self._phi.clone()
        weights = self.aggregator.gramian_weighting(gramian)  # all T rows: the state is T x T
        if not bool(labelled.all()):
            pair = labelled[:, None] & labelled[None, :]
            self._phi.copy_(torch.where(pair, self._phi, before))
            weights = weights * labelled
        return weights

    def get_extra_state(self):
        return {"phi": self._phi.clone()}

    def set_extra_state(self, state):
        self._phi.copy_(state["phi"])


class CAGrad(GradientAggregation):
    """CAGrad (Liu et al. 2021): the best worst-case improvement within a ball of radius c ||g_0|| around
    the mean gradient g_0. Needs cvxpy (with the Clarabel solver)."""

    method = "cagrad"
    packages = ("cvxpy", "clarabel")

    def __init__(self, c: float = 0.4, norm_eps: float = 0.0001, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.c, self.norm_eps = float(c), float(norm_eps)

    def make_aggregator(self, num_tasks):
        return aggregation.CAGrad(c=self.c, norm_eps=self.norm_eps)


class IMTLG(GradientAggregation):
    """IMTL-G (Liu et al. 2021): the update with equal projections on every task gradient's direction."""

    method = "imtl_g"

    def make_aggregator(self, num_tasks):
        return aggregation.IMTLG()


class NashMTL(GradientAggregation):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution, G w = 1/w. Needs cvxpy and ECOS.

    Stateful (the solver warm-starts from the previous weights; they are in the checkpoint). The norm
    cap `max_norm` is applied here, on the true gradients, to the labelled tasks' aggregate.
    """

    method = "nash_mtl"
    packages = ("cvxpy", "ecos")

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
                 grad_on: str = "parameters"):
        super().__init__(grad_on)
        if not max_norm >= 0:
            raise UsageError(f"weighting.max_norm={max_norm}: must be >= 0 (0 turns the cap off)")
        self.max_norm = float(max_norm)
        self.update_weights_every, self.optim_niter = int(update_weights_every), int(optim_niter)

    def make_aggregator(self, num_tasks):
        return aggregation.NashMTL(n_tasks=num_tasks, max_norm=0.0, update_weights_every=self.update_weights_every,
                                   optim_niter=self.optim_niter)

    def solve(self, gramian, labelled):
        absent = ~labelled
        if bool(absent.any()):
            # an unlabelled task becomes a decoupled unit direction: the labelled tasks' equations
            # (G w)_k = 1 / w_k do not involve it, so their weights are those of their own sub-problem
            fill = gramian.diagonal()[labelled].mean() if bool(labelled.any()) else gramian.new_tensor(1.0)
            gramian = torch.where(absent[:, None] | absent[None, :], torch.zeros_like(gramian), gramian)
            gramian = gramian + torch.diag(absent.to(gramian.dtype) * fill)
        with warnings.catch_warnings():  # cvxpy: torchjd's problem is not DPP (re-compiled at each solve)
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            weights = self.aggregator.weighting(_reduced_matrix(gramian)).to(gramian.dtype) * labelled
        if self.max_norm > 0:
            norm = (weights @ gramian @ weights).clamp_min(0).sqrt()
            weights = weights * (self.max_norm / norm).clamp(max=1.0)
        return weights

    def get_extra_state(self):
        w = self.aggregator.weighting
        return {"step": float(w.step), "previous": torch.as_tensor(w.prvs_alpha, dtype=torch.float64),
                "normalization": torch.as_tensor(w.normalization_factor, dtype=torch.float64)}

    def set_extra_state(self, state):
        w = self.aggregator.weighting
        w.prvs_alpha = state["previous"].numpy().astype("float32")
        w.normalization_factor = state["normalization"].numpy()
        w.step = float(state["step"])
        if w.step > 0:  # torchjd builds the cvxpy problem on its first call only
            w._init_optim_problem()


class AlignedMTL(GradientAggregation):
    """Aligned-MTL (Senushkin et al. 2023): align the principal components of the task gradients."""

    method = "aligned_mtl"

    def __init__(self, scale_mode: str = "min", grad_on: str = "parameters"):
        super().__init__(grad_on)
        if scale_mode not in ("min", "median", "rmse"):
            raise UsageError(f"weighting.scale_mode={scale_mode}: valid: min, median, rmse")
        self.scale_mode = scale_mode

    def make_aggregator(self, num_tasks):
        return aggregation.AlignedMTL(scale_mode=self.scale_mode)


class UPGrad(GradientAggregation):
    """UPGrad (Quinton & Rey 2024): project every task gradient on the dual cone of all of them, average.
    Needs quadprog (through qpsolvers)."""

    method = "upgrad"
    packages = ("qpsolvers", "quadprog")

    def __init__(self, norm_eps: float = 0.0001, reg_eps: float = 0.0001, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)

    def make_aggregator(self, num_tasks):
        return aggregation.UPGrad(projector=QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps))


class DualProj(UPGrad):
    """DualProj (as in Quinton & Rey 2024, after GEM): the mean gradient projected on the dual cone of the
    task gradients. Needs quadprog (through qpsolvers)."""

    method = "dualproj"

    def make_aggregator(self, num_tasks):
        return aggregation.DualProj(projector=QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps))


class FairGrad(GradientAggregation):
    """FairGrad (Ban & Ji 2024): alpha-fair allocation, G w = w^(-1/alpha). Needs scipy."""

    method = "fairgrad"
    packages = ("scipy",)

    def __init__(self, alpha: float = 1.0, max_iters: int | None = None, grad_on: str = "parameters"):
        super().__init__(grad_on)
        if not alpha > 0:
            raise UsageError(f"weighting.alpha={alpha}: must be > 0 (the paper uses 0.5 to 5)")
        self.alpha = float(alpha)
        self.max_iters = None if max_iters is None else int(max_iters)

    def make_aggregator(self, num_tasks):
        return aggregation.FairGrad(alpha=self.alpha, max_iters=self.max_iters)


class GradDrop(GradientAggregation):
    """GradDrop (Chen et al. 2020): keep, coordinate by coordinate, the gradients of one sign, drawn with
    the probability of the positive sign's purity. Originally applied to the shared representation."""

    method = "graddrop"

    def __init__(self, leak: list[float] | None = None, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.leak = None if leak is None else [float(v) for v in leak]

    def make_aggregator(self, num_tasks):
        if self.leak is not None and len(self.leak) != num_tasks:
            raise UsageError(f"weighting.leak: {len(self.leak)} values for {num_tasks} tasks "
                             f"({', '.join(self.task_names)})")
        return aggregation.GradDrop(leak=None if self.leak is None else torch.tensor(self.leak))

    def _combine_matrix(self, blocks):
        leak = self.aggregator.leak
        if leak is not None and leak.device != blocks[0].device:
            self.aggregator.leak = leak.to(blocks[0].device)  # once: the leak follows the Jacobian
        return super()._combine_matrix(blocks)


class ConFIG(GradientAggregation):
    """ConFIG (Liu et al. 2024): the direction with equal cosine to every task gradient, scaled by the sum
    of the projections on it."""

    method = "config"

    def make_aggregator(self, num_tasks):
        return aggregation.ConFIG()
