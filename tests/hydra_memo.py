"""Hydra's run without the composition it throws away (installed by tests/conftest.py).

A Hydra app composes its config twice: `Hydra.get_mode` composes the whole config only to read `hydra.mode`, then
the run composes it again. Composing mtlrun's config is most of what a tiny in-process CLI test costs, so in the
test process `get_mode` answers "not set" without composing unless an override names `hydra.mode`. That is what
the real get_mode returns for mtlrun's configs, which never set it (tests/cli/test_configs.py checks with the real
one, kept as ORIGINAL_GET_MODE); it also returns None when composing fails, and the run's own composition then
reports the error. Real processes (the e2e tests that start one, MTLRUN_TEST_SUBPROCESS=1) run Hydra unchanged.

Each composition also reads and parses every config file it uses again (YAML, then OmegaConf nodes, then the
defaults list). In the test process a file's ConfigResult is kept, keyed by the file's path, modification time,
size and inode (a test that rewrites a file gets the new one), and handed out with a deep copy of its config (a
merge takes nodes of it into the composed config, which overrides then change) and its defaults list shared
(Hydra deep-copies that before changing it). Composing the shipped configs then takes 0.73x the time (median of
4 alternating rounds of 20 configs, one thread). Keeping only the parsed YAML was measured too: no faster.
"""

from __future__ import annotations

import copy
import os

from hydra._internal.config_repository import ConfigRepository
from hydra._internal.hydra import Hydra
from hydra.core.object_type import ObjectType

ORIGINAL_GET_MODE = Hydra.get_mode
ORIGINAL_LOAD_CONFIG = ConfigRepository.load_config
_loaded: dict[tuple, object] = {}


def _get_mode(self, config_name, overrides):
    if any("mode" in override for override in overrides):
        return ORIGINAL_GET_MODE(self, config_name, overrides)
    return None


def _load_config(self, config_path):
    source = self._find_object_source(config_path=config_path, object_type=ObjectType.CONFIG)
    # by name, as Hydra tests its sources: its plugin scan loads the class a second time, under the same name
    if type(source).__name__ != "FileConfigSource":  # Hydra's own package configs, ConfigStore nodes: as they are
        return ORIGINAL_LOAD_CONFIG(self, config_path)
    path = os.path.realpath(os.path.join(source.path, source._normalize_file_name(config_path)))
    try:
        stat = os.stat(path)
    except OSError:
        return ORIGINAL_LOAD_CONFIG(self, config_path)
    # config_path too: a result's defaults list is relative to the group it was loaded as (one file can be two)
    key = (config_path, path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if key not in _loaded:
        _loaded[key] = ORIGINAL_LOAD_CONFIG(self, config_path)
    result = copy.copy(_loaded[key])
    result.config = copy.deepcopy(result.config)  # a merge takes nodes of it into the composed config
    return result


def install() -> None:
    Hydra.get_mode = _get_mode
    ConfigRepository.load_config = _load_config
