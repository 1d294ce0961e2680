"""One-off walks over the autograd graph of the first step (the graph's shape is the same every step)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import torch
from torch import nn


def _walk(roots: Iterable[torch.Tensor], stop: set = frozenset()):
    """Autograd nodes reachable from `roots`, breadth first, not crossing the edges in `stop`.

    An edge is (node, output_nr): a consumer's link to one output of a node. Stopping at the edges of
    the shared tensors (rather than at their nodes) still walks into a node that produced them when it
    is reached through another of its outputs, as with a compiled model whose one node makes both the
    predictions and the shared representation.
    """
    queue = deque(t.grad_fn for t in roots if t.grad_fn is not None)
    seen = set()
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        yield node
        queue.extend(child for child, nr in node.next_functions if child is not None and (child, nr) not in stop)


def reaches_around(losses: list[torch.Tensor], shared: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether a loss depends on one of `params` other than through the `shared` tensors.

    The model contract (mtlrun.models.base) says it must not: `shared` is a cut between the shared
    parameters and the task-specific computation. A model that breaks it would get wrong gradients from
    per-task gradients taken with respect to `shared`.
    """
    stop = {(s.grad_fn, s.output_nr) for s in shared if s.grad_fn is not None}
    ids = {id(p) for p in params}
    return any(id(getattr(node, "variable", None)) in ids for node in _walk(losses, stop))


def nearest_layer(losses: list[torch.Tensor], model: nn.Module, candidates: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters of the layer among `candidates` nearest to the losses (GradNorm's W).

    Walking back from the losses, the first candidate weight with two or more dimensions (a Linear or
    Conv kernel, not a normalisation scale) names the module it belongs to; the layer is that module's
    own candidate parameters (weight and bias). Empty when no candidate weight is reachable.
    """
    ids = {id(p) for p in candidates}
    for node in _walk(losses):
        var = getattr(node, "variable", None)
        if var is not None and id(var) in ids and var.dim() >= 2:
            for module in model.modules():
                own = list(module.parameters(recurse=False))
                if any(p is var for p in own):
                    return [p for p in own if id(p) in ids and p.requires_grad]
    return []
