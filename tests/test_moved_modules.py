"""Modules that moved (mtlrun/moved_modules.py) keep their old paths for one release: a checkpoint's config
naming one is rewritten silently, a user's `_target_` or import naming one works with a FutureWarning that
names the new path, and the old name is the same module object (one class, not a copy)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from contracts import compose_config

from mtlrun.build import build_components
from mtlrun.engine import checkpoint
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.moved_modules import MOVED_MODULES, moved_name
from mtlrun.trust import check_checkpoint_config

OLD_HPS = "mtlrun.models.sharing.hps.HardParameterSharing"
NEW_HPS = "mtlrun.models.arch.hps.HardParameterSharing"


@pytest.fixture
def forget_old_names():
    """The hook speaks when an old name is first imported; forget earlier tests' imports of old names."""
    def forget():
        for name in [n for n in sys.modules if moved_name(n)]:
            del sys.modules[name]
    forget()
    yield
    forget()


def test_every_moved_prefix_names_an_existing_module():
    import importlib

    for new in MOVED_MODULES.values():
        importlib.import_module(new)


def test_a_checkpoint_naming_an_old_module_path_loads_with_the_new_one(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"mtlrun_version": "0.1.0", "format": checkpoint.FORMAT, "model": {},
                "config": {"arch": {"_target_": OLD_HPS, "_partial_": True}}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silent: the checkpoint's author cannot edit it
        config = checkpoint.load(path)["config"]
    assert config["arch"]["_target_"] == NEW_HPS
    check_checkpoint_config(config, trusted=(), source="checkpoint=old.pt")  # shipped code: not refused


def test_a_users_target_naming_an_old_module_path_builds_with_a_deprecation_warning(forget_old_names):
    cfg = compose_config(["data.n_train=4", "data.n_val=4", "data.n_test=4", f"arch._target_={OLD_HPS}"])
    with pytest.warns(FutureWarning, match=r"mtlrun\.models\.sharing moved to mtlrun\.models\.arch"):
        parts = build_components(cfg)
    assert type(parts.model) is HardParameterSharing


def test_an_old_import_path_is_the_same_module(forget_old_names):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from mtlrun.engine.loggers.base import Trackers
    # one warning, at the package the old path goes through, not one more for each module under it
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, "mtlrun.engine.loggers moved to mtlrun.engine.logger (with everything under it); the old "
                        "name is deprecated and goes in mtlrun 0.3")]
    assert caught[0].filename == __file__  # it points at the line that names the old path
    from mtlrun.engine.logger.base import Trackers as current

    assert Trackers is current
    assert sys.modules["mtlrun.engine.logger.base"].__spec__.name == "mtlrun.engine.logger.base"
