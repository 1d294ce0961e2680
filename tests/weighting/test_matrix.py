"""Every `arch` x `weighting` x `grad_on` combination either trains a few steps on multidigits through the real
Trainer, or is refused at build time with a message naming weighting.grad_on. Which of the two is written down
here (REFUSED), not inferred from what happens, so a combination that starts to train where it must refuse, or
to refuse where it must train, fails.

The archs and methods are found by globbing configs/arch and configs/weighting, so a new option is covered
automatically; a new *kind* of method must be placed in one of the three kinds below. The default run takes a
covering list (every arch with every weighting, training; every weighting and every arch at both grad_on
levels; every refusal); `pytest --exhaustive` runs the full grid.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from contracts import compose_config
from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.data.loading import to_device
from mtlrun.distributed import DistInfo
from mtlrun.engine.trainer import Trainer
from mtlrun.errors import UsageError
from mtlrun.weighting.gradient_base import GradientAggregation

CONFIGS = Path(config_dir())
ARCHS = sorted(p.stem for p in (CONFIGS / "arch").glob("*.yaml"))
METHODS = {p.stem: OmegaConf.load(p) for p in sorted((CONFIGS / "weighting").glob("*.yaml"))}
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=16", "data.eval_batch_size=16",
         "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "trainer.device=cpu",
         "trainer.progress_bar=false"]

# The three kinds of method, each derived from what the method is, not from its YAML's keys:
# gradient-level: per-task gradients aggregated (a GradientAggregation), at either grad_on level;
GRADIENT_LEVEL = sorted(m for m, node in METHODS.items() if issubclass(get_class(node._target_), GradientAggregation))
# loss-level: one backward of a weighted sum of the losses; they take no grad_on (their YAML keeps it null);
LOSS_LEVEL = sorted(m for m, node in METHODS.items()
                    if m not in GRADIENT_LEVEL and node.grad_on is None)
# and GradNorm: a loss weighting that balances gradient norms, taken at W = grad_on (either level).
GRADIENT_NORMS = ["gradnorm"]
TAKES_GRAD_ON = sorted(GRADIENT_LEVEL + GRADIENT_NORMS)

# Architectures whose tasks share no tensor, with the class name their refusal names.
NO_SHARED_REPRESENTATION = {"soft": "SoftParameterSharing"}

LEVELS = ("parameters", "representation")
GRAD_ON = (None, *LEVELS)  # None: no override, the YAML's own (parameters, or null for a loss-level method)

# Every refusal, by name: (archs, methods, grad_on values, the message; {arch}, {method}, {grad_on} filled in).
# Every combination of the grid not listed here must train.
REFUSED = [
    # a loss-level method backpropagates one weighted sum: grad_on means nothing to it, on any arch
    (ARCHS, LOSS_LEVEL, LEVELS,
     r"weighting.grad_on={grad_on}: weighting={method} is loss-level \(one backward of a weighted sum of the "
     r"losses\) and takes no grad_on"),
    # the representation level needs a tensor every task reads: soft sharing has none
    (list(NO_SHARED_REPRESENTATION), TAKES_GRAD_ON, ("representation",),
     r"weighting.grad_on=representation: the architecture {arch} has no shared representation"),
]


def refusal(arch: str, method: str, grad_on: str | None) -> str | None:
    """The message (a regex) the combination must be refused with, or None where it must train."""
    for archs, methods, levels, message in REFUSED:
        if arch in archs and method in methods and grad_on in levels:
            return message.format(arch=NO_SHARED_REPRESENTATION.get(arch, arch), method=method, grad_on=grad_on)
    return None


GRID = list(product(ARCHS, METHODS, GRAD_ON))


def covering_list() -> list[tuple[str, str, str | None]]:
    """A subset of GRID where every arch trains with every weighting, and every weighting and every arch meets
    both grad_on levels (training where it can, refused where it must). Greedy: each (arch, method) pair trains
    at the level that covers most of what is still uncovered; what is left is added after."""
    uncovered = {("method", m, g) for m in METHODS for g in LEVELS} | {("arch", a, g) for a in ARCHS for g in LEVELS}
    cases = []

    def add(case):
        arch, method, grad_on = case
        cases.append(case)
        uncovered.difference_update({("method", method, grad_on), ("arch", arch, grad_on)})

    for arch, method in product(ARCHS, METHODS):
        trains = [g for g in GRAD_ON if refusal(arch, method, g) is None]
        add((arch, method, max(trains, key=lambda g: len({("method", method, g), ("arch", arch, g)} & uncovered))))
    for kind, name, grad_on in sorted(uncovered, key=str):
        if (kind, name, grad_on) not in uncovered:  # covered by a case added in this loop
            continue
        if kind == "method":  # a loss-level method at a level: refused on any arch, so spread them
            archs = [a for a in ARCHS if ("arch", a, grad_on) in uncovered] or ARCHS
            add((archs[len(cases) % len(archs)], name, grad_on))
        else:  # an arch at a level where it trains nothing (soft, representation): met by the methods that take it
            methods = [m for m in TAKES_GRAD_ON if ("method", m, grad_on) in uncovered] or TAKES_GRAD_ON
            add((name, methods[len(cases) % len(methods)], grad_on))
    return cases


COVERING = covering_list()


def make_trainer(overrides, tmp_path) -> Trainer:
    return build_trainer(compose_config([*SMALL, *overrides]), tmp_path, dist=DistInfo())


def train_steps(trainer: Trainer, steps: int = 3) -> None:
    data = trainer.data.dataset("train")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for i in range(steps):
        batch = to_device(data.__getitems__(list(range(16 * i, 16 * (i + 1)))), trainer.device)
        trainer.step([batch])
    trainer.check_nonfinite()  # raises on any NaN/inf loss
    assert trainer.train_sums.count == steps
    assert torch.isfinite(trainer.train_sums.packed).all()
    changed = [not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())]
    assert sum(changed) > len(changed) // 2, "most parameters should move"


def test_the_archs_and_methods_are_found_and_each_method_has_one_kind():
    assert "hps" in ARCHS and {"static", "upgrad", "gradnorm"} <= set(METHODS)
    kinds = GRADIENT_LEVEL + LOSS_LEVEL + GRADIENT_NORMS
    assert sorted(kinds) == sorted(METHODS), "a method of no kind, or of two: place it in one of the three"
    assert "upgrad" in GRADIENT_LEVEL and "static" in LOSS_LEVEL
    # the YAMLs agree: every method that takes grad_on sets it (to parameters), the others leave it null
    assert [m for m in METHODS if METHODS[m].grad_on is not None] == TAKES_GRAD_ON
    assert all(METHODS[m].grad_on == "parameters" for m in TAKES_GRAD_ON)
    shares_nothing = [a for a in ARCHS
                      if not get_class(OmegaConf.load(CONFIGS / "arch" / f"{a}.yaml")._target_).has_shared_representation]
    assert shares_nothing == list(NO_SHARED_REPRESENTATION)
    assert [get_class(OmegaConf.load(CONFIGS / "arch" / f"{a}.yaml")._target_).__name__ for a in shares_nothing] == \
        list(NO_SHARED_REPRESENTATION.values())


def test_the_covering_list_covers():
    assert len(set(COVERING)) == len(COVERING) and set(COVERING) <= set(GRID)
    trained = {(a, m) for a, m, g in COVERING if refusal(a, m, g) is None}
    assert trained == set(product(ARCHS, METHODS)), "every arch trains with every weighting"
    assert {(m, g) for _, m, g in COVERING} >= set(product(METHODS, LEVELS)), "every weighting at both levels"
    assert {(a, g) for a, _, g in COVERING} >= set(product(ARCHS, LEVELS)), "every arch at both levels"
    for archs, methods, levels, _ in REFUSED:  # every kind of refusal is met
        assert any(a in archs and m in methods and g in levels for a, m, g in COVERING)
    # both levels train somewhere for every method that takes grad_on
    assert {(m, g) for a, m, g in COVERING if refusal(a, m, g) is None} >= set(product(TAKES_GRAD_ON, LEVELS))
    assert len(COVERING) < len(GRID) / 2


@pytest.mark.parametrize("arch,method,grad_on", [
    pytest.param(*case, id="-".join([case[0], case[1], case[2] or "default"]),
                 marks=() if case in COVERING else pytest.mark.exhaustive) for case in GRID])
def test_trains_or_is_refused_as_named(tmp_path, arch, method, grad_on):
    overrides = [f"arch={arch}", f"weighting={method}", *([f"weighting.grad_on={grad_on}"] if grad_on else [])]
    message = refusal(arch, method, grad_on)
    if message is not None:
        with pytest.raises(UsageError, match=message):
            make_trainer(overrides, tmp_path)
        return
    train_steps(make_trainer(overrides, tmp_path))
