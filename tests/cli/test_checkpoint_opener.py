"""The one checkpoint opener (mtlrun/inference/opener.py) that eval, predict, export and mtlrun.load share: each command's
declaration of the keys it accepts is the keys its YAML holds, and no command carries a checkpoint's trackers
(`logger`) past the trust check. In-process: no CLI run."""

from __future__ import annotations

import importlib
import sys

import pytest
from contracts import TINY, compose_config
from omegaconf import OmegaConf

import mtlrun
from mtlrun.build import build_components
from mtlrun.config import config_dir
from mtlrun.engine import checkpoint
from mtlrun.errors import UsageError
from mtlrun.inference.opener import open_checkpoint

COMMANDS = ["eval", "predict", "export"]
NOT_KEYS = ("defaults", "hydra")  # Hydra's own nodes of a command's YAML


def _leaf_keys(node, key: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return set().union(*(_leaf_keys(v, f"{key}.{k}" if key else str(k)) for k, v in node.items()))
    return {key}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_commands_declaration_lists_the_keys_of_its_yaml(command):
    """configs/<command>.yaml holds the command's own options, and under data/trainer exactly the keys of the
    checkpoint's config it may change (or read a new manifest with): one list, checked here, not five."""
    accepts = importlib.import_module(f"mtlrun.{command}").ACCEPTS
    assert accepts.command == command
    yaml = OmegaConf.to_container(OmegaConf.load(config_dir() / f"{command}.yaml"), resolve=False)
    sections = {"data", "trainer"}
    options = {k for k in yaml if k not in (*NOT_KEYS, *sections)}
    assert options == set(accepts.options)
    changed = _leaf_keys({k: v for k, v in yaml.items() if k in sections})
    assert changed == {*accepts.editable, *accepts.new_data}
    assert len(accepts.editable) == len(set(accepts.editable)) and not set(accepts.editable) & set(accepts.new_data)


@pytest.fixture(scope="module")
def with_a_tracker(tmp_path_factory):
    """TINY's model as a checkpoint whose config names a tracker in a module that records being imported."""
    root = tmp_path_factory.mktemp("opener")
    (root / "records_its_import.py").write_text(
        f"open({str(root / 'imported')!r}, 'w').close()\nclass Tracker:\n    def __init__(self, project=''): pass\n")
    cfg = compose_config(TINY)
    parts = build_components(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["logger"] = {"spy": {"_target_": "records_its_import.Tracker", "project": "somebody-elses"}}
    checkpoint.save(root / "best.pt", {"mtlrun_version": mtlrun.__version__, "format": checkpoint.FORMAT,
                                       "config": config, "model": parts.model.state_dict(),
                                       "data": parts.data.state_dict(), "epoch": 3, "global_step": 24})
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_opens_a_checkpoint_without_its_trackers(with_a_tracker, command):
    """The trust check skips `logger` (a run's trackers come from its own command line), so nothing after it may
    read it: predict used to keep it, and validation imported its `_target_`. Eval's behaviour for all: dropped
    before the overrides, never imported, never written into a config.yaml."""
    cfg = compose_config([f"checkpoint={with_a_tracker / 'best.pt'}", "data.batch_size=7"], config_name=command)
    opened = open_checkpoint(cfg, importlib.import_module(f"mtlrun.{command}").ACCEPTS, ["data.batch_size=7"])
    assert "logger" not in opened.config and "logger" not in opened.source["config"]
    assert opened.config.data.eval_batch_size == 7  # `data.batch_size` alone is the eval batch size
    assert (opened.source["epoch"], opened.source["global_step"], opened.reads) == (3, 24, "split=test")
    assert not (with_a_tracker / "imported").exists()


def test_mtlrun_load_drops_the_trackers_too(with_a_tracker):
    predictor = mtlrun.load(with_a_tracker / "best.pt")
    assert "logger" not in predictor.config and predictor.epoch == 3
    assert not (with_a_tracker / "imported").exists()


def test_a_key_outside_a_commands_declaration_is_refused(with_a_tracker):
    cfg = compose_config([f"checkpoint={with_a_tracker / 'best.pt'}", "+trainer.max_epochs=9"], config_name="eval")
    with pytest.raises(UsageError, match=r"eval accepts overrides of data.batch_size, .*trainer.limit_eval_batches "
                                         r"only"):
        open_checkpoint(cfg, importlib.import_module("mtlrun.eval").ACCEPTS, ["+trainer.max_epochs=9"])
    cfg = compose_config([f"checkpoint={with_a_tracker}"], config_name="eval")
    with pytest.raises(UsageError, match="it is a directory; point at checkpoints/last.pt"):  # eval reads no export
        open_checkpoint(cfg, importlib.import_module("mtlrun.eval").ACCEPTS, [])
