"""Nash-MTL: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi, G. Chechik & E. Fetaya,
"Multi-Task Learning as a Bargaining Game", ICML 2022.

The update is the Nash bargaining solution between the tasks: the weights solve G w = 1 / w (G the
Gramian of the task gradients), by a sequence of convex problems warm-started from the previous step's
weights; the aggregate's norm is capped at `max_norm`, as in the paper's code.
torchjd.aggregation.NashMTL; its solver is cvxpy with ECOS (pip install "mtlrun[solvers]").

Stateful: the solver's warm start is in the checkpoint (`get_extra_state`).
"""

from __future__ import annotations

import warnings

import torch
from torchjd import aggregation

from mtlrun.errors import UsageError
from mtlrun.weighting.gradient_base import GradientAggregation


def _reduced_matrix(gramian: torch.Tensor) -> torch.Tensor:
    """A T x T matrix R with R R^T = gramian: stands in for J where only J's Gramian matters."""
    eigenvalues, vectors = torch.linalg.eigh(gramian)
    return vectors * eigenvalues.clamp_min(0).sqrt()


class NashMTL(GradientAggregation):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution, G w = 1/w. Needs cvxpy and ECOS.

    Stateful (the solver warm-starts from the previous weights; they are in the checkpoint). The norm
    cap `max_norm` is applied here, on the true gradients, to the labelled tasks' aggregate.
    """

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
