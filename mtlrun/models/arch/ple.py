"""Progressive Layered Extraction (Tang et al. 2020) on an image encoder; `num_levels=1` is CGC.

The first `shared_stages` encoder stages are a shared bottom. The remaining stages are split into
`num_levels` consecutive groups, as evenly as possible (earlier levels take the extra stage; the last
level also takes the projection). At each level there are `num_shared_experts` shared experts and
`num_task_experts` experts per task; an expert is a copy of that level's stages with its own weights
(from a fresh `make_encoder()`). Per level, task t's gate, softmax(W pool(x_t) + b) over its own and the
shared experts, mixes them into task t's input to the next level (its head at the last level); below the
last level a shared gate over all experts makes the shared experts' next input. Gates read the globally
average-pooled level input.

Parameters only task t uses: its head, its experts and gate at the last level, and its gate one level
below (whose output only task t's last level reads). Lower task experts feed the shared gate, so they
are shared. The shared representation is every shared tensor those task modules read (the shared
experts' outputs, the lower experts' outputs and pooled inputs the last gates read, and the bottom features
for CGC), taken through `tap` so that no element feeds another.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.models.base import MultiTaskModel
from mtlrun.models.arch._common import (Gate, check_gate_input, check_range, check_raw_gate_input, make_heads,
                                             mix, pool, staged, tap)


def split_stages(first: int, num_stages: int, num_levels: int) -> list[list[int]]:
    """Stage indices first .. num_stages - 1 in `num_levels` consecutive groups, sizes differing by <= 1."""
    rest = list(range(first, num_stages))
    if not rest:
        return [[]]  # one level of projection-only experts
    size, extra = divmod(len(rest), num_levels)
    groups, start = [], 0
    for level in range(num_levels):
        end = start + size + (level < extra)
        groups.append(rest[start:end])
        start = end
    return groups


class PLELevel(nn.Module):
    def __init__(self, shared_experts: list[nn.Module], task_experts: dict[str, list[nn.Module]],
                 in_channels: int, last: bool):
        super().__init__()
        self.shared_experts = nn.ModuleList(shared_experts)
        self.task_experts = nn.ModuleDict({t: nn.ModuleList(e) for t, e in task_experts.items()})
        n_shared, n_task = len(shared_experts), len(next(iter(task_experts.values())))
        self.task_gates = nn.ModuleDict({t: Gate(in_channels, n_task + n_shared) for t in task_experts})
        self.shared_gate = None if last else Gate(in_channels, n_task * len(task_experts) + n_shared)


class PLE(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None, num_levels: int = 1,
                 num_shared_experts: int = 1, num_task_experts: int = 1, shared_stages: int = 1,
                 head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        names = list(tasks)
        first = staged(make_encoder(), "ple")
        num_stages = len(first.stages)
        check_range("arch.shared_stages", shared_stages, 0, num_stages,
                    f" (the backbone {type(first).__name__} has {num_stages} stages)")
        check_range("arch.num_shared_experts", num_shared_experts, 1)
        check_range("arch.num_task_experts", num_task_experts, 1)
        check_range("arch.num_levels", num_levels, 1)
        left = num_stages - shared_stages
        if num_levels > max(1, left):
            raise UsageError(f"arch.num_levels={num_levels}: a level needs at least one encoder stage, and "
                             f"{left} of the backbone's {num_stages} stages are left after "
                             f"arch.shared_stages={shared_stages}")
        check_gate_input(modality, shared_stages, "ple")
        self.shared_stages = shared_stages
        self.bottom = nn.Sequential(*first.stages[:shared_stages])
        # one encoder per expert slot; slot s's expert at every level is a piece of encoder s
        slots = num_shared_experts + len(names) * num_task_experts
        encoders = [first] + [staged(make_encoder(), "ple") for _ in range(slots - 1)]
        groups = split_stages(shared_stages, num_stages, num_levels)
        self.levels = nn.ModuleList()
        for level, group in enumerate(groups):
            last = level == len(groups) - 1

            def expert(slot: int) -> nn.Module:
                encoder = encoders[slot]
                return nn.Sequential(*(encoder.stages[i] for i in group), *([encoder.project] if last else []))

            start = group[0] if group else num_stages
            in_channels = first.stage_channels[start - 1] if start else first.in_channels
            task_experts = {t: [expert(num_shared_experts + k * num_task_experts + j) for j in range(num_task_experts)]
                            for k, t in enumerate(names)}
            self.levels.append(PLELevel([expert(s) for s in range(num_shared_experts)], task_experts,
                                        in_channels, last))
        self.heads = make_heads(tasks, first, head_hidden, head_dropout, arch="ple")

    def task_modules(self, task):
        modules = [self.heads[task], self.levels[-1].task_experts[task], self.levels[-1].task_gates[task]]
        if len(self.levels) > 1:
            modules.append(self.levels[-2].task_gates[task])
        return modules

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x = self.encoder_input(inputs, modality_mask)
        if not self.shared_stages:
            check_raw_gate_input(x, "ple")
        x = self.bottom(x)
        graph = _Graph(constant=x if self.shared_stages == 0 else None)
        names = list(self.heads)
        task_in = dict.fromkeys(names, x)
        owned_in = dict.fromkeys(names, False)  # task_in[t] was computed by task t's own modules
        shared_in, last = x, len(self.levels) - 1
        for level_index, level in enumerate(self.levels):
            is_last, gates_owned = level_index == last, level_index >= last - 1
            shared_out = torch.stack([e(shared_in) for e in level.shared_experts], dim=1)
            task_out = {}
            for t in names:
                inp = task_in[t] if owned_in[t] or not is_last else graph.tap(task_in[t])
                task_out[t] = torch.stack([e(inp) for e in level.task_experts[t]], dim=1)
            if not is_last:
                weights = level.shared_gate(graph.pool(shared_in))
                next_shared_in = mix(weights, torch.cat([*task_out.values(), shared_out], dim=1))
            for t in names:
                gate, own = level.task_gates[t], task_out[t]
                if gates_owned:  # task t's module: it reads shared tensors through taps
                    gate_in = pool(task_in[t]) if owned_in[t] else graph.tap(graph.pool(task_in[t]))
                    experts = torch.cat([own if is_last else graph.tap(own), graph.tap(shared_out)], dim=1)
                else:
                    gate_in, experts = graph.pool(task_in[t]), torch.cat([own, shared_out], dim=1)
                task_in[t] = mix(gate(gate_in), experts)
                owned_in[t] = gates_owned
            if not is_last:
                shared_in = next_shared_in
        preds = {t: self.heads[t](task_in[t]) for t in names}
        return (preds, graph.taps) if return_shared else preds


class _Graph:
    """One forward's bookkeeping: pooled tensors computed once, and the taps (the shared representation).

    Tensors derived from the raw input alone (`constant`, with no shared bottom) are read directly: they
    depend on no parameter, so they are not part of the shared representation.
    """

    def __init__(self, constant: torch.Tensor | None):
        self.taps: list[torch.Tensor] = []
        self._constant = set() if constant is None else {id(constant)}
        self._pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._tapped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # keyed by id: keep the key alive

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if id(x) not in self._pooled:
            pooled = pool(x)
            self._pooled[id(x)] = (x, pooled)
            if id(x) in self._constant:
                self._constant.add(id(pooled))
        return self._pooled[id(x)][1]

    def tap(self, x: torch.Tensor) -> torch.Tensor:
        if id(x) in self._constant:
            return x
        if id(x) not in self._tapped:
            self._tapped[id(x)] = (x, tap(x))
            self.taps.append(self._tapped[id(x)][1])
        return self._tapped[id(x)][1]
