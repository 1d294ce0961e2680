"""Every `arch` x `weighting` pair trains a few steps on multidigits, through the real Trainer.

Parametrized by globbing configs/arch and configs/weighting, so a new option is covered automatically.
Gradient-level methods run at their configured `grad_on` level and, where the arch has a shared
representation, at the representation level too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from contracts import compose_config
from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.data.loading import to_device
from mtlrun.distributed import DistInfo
from mtlrun.engine.trainer import Trainer
from mtlrun.errors import UsageError

CONFIGS = Path(config_dir())
ARCHS = sorted(p.stem for p in (CONFIGS / "arch").glob("*.yaml"))
WEIGHTINGS = sorted(p.stem for p in (CONFIGS / "weighting").glob("*.yaml"))
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=16", "data.eval_batch_size=16",
         "backbone.image.channels=[8,16]", "backbone.image.out_dim=32", "trainer.device=cpu",
         "trainer.progress_bar=false"]




def make_trainer(overrides, tmp_path) -> Trainer:
    return build_trainer(compose_config([*SMALL, *overrides]), tmp_path, dist=DistInfo())


def train_steps(trainer: Trainer, steps: int = 3) -> None:
    data = trainer.data.dataset("train")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for i in range(steps):
        batch = to_device(data.__getitems__(list(range(16 * i, 16 * (i + 1)))), trainer.device)
        trainer.training_step(batch)
        trainer.optimizer_step()
    trainer._check_nonfinite()  # raises on any NaN/inf loss
    assert trainer.train_count == steps
    assert torch.isfinite(trainer.train_sums).all()
    changed = [not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())]
    assert sum(changed) > len(changed) // 2, "most parameters should move"


def test_globs_found_the_methods():
    assert "hps" in ARCHS and "static" in WEIGHTINGS


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_arch_x_weighting_trains(tmp_path, arch, weighting):
    trainer = make_trainer([f"arch={arch}", f"weighting={weighting}"], tmp_path)
    train_steps(trainer)


GRADIENT_LEVEL = [w for w in WEIGHTINGS
                  if "grad_on" in OmegaConf.load(CONFIGS / "weighting" / f"{w}.yaml")]


@pytest.mark.parametrize("weighting", GRADIENT_LEVEL)
@pytest.mark.parametrize("arch", ARCHS)
def test_representation_level_trains_or_refuses_clearly(tmp_path, arch, weighting):
    overrides = [f"arch={arch}", f"weighting={weighting}", "weighting.grad_on=representation"]
    try:
        trainer = make_trainer(overrides, tmp_path)
    except UsageError as exc:  # e.g. soft sharing has no shared representation
        assert "grad_on" in str(exc)
        return
    train_steps(trainer)
