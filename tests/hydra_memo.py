"""Hydra's run without the composition it throws away (installed by tests/conftest.py).

A Hydra app composes its config twice: `Hydra.get_mode` composes the whole config only to read `hydra.mode`, then
the run composes it again. Composing mtlrun's config is most of what a tiny in-process CLI test costs, so in the
test process `get_mode` answers "not set" without composing unless an override names `hydra.mode`. That is what
the real get_mode returns for mtlrun's configs, which never set it (tests/cli/test_configs.py checks with the real
one, kept as ORIGINAL_GET_MODE); it also returns None when composing fails, and the run's own composition then
reports the error. Real processes (the e2e tests that start one, MTLRUN_TEST_SUBPROCESS=1) run Hydra unchanged.

Each composition also reads and parses every config file it uses again (YAML, then OmegaConf nodes, then the
defaults list). In the test process a file's ConfigResult is kept, keyed by the file's path, modification time,
size and inode (a test that rewrites a file gets the new one); Hydra's own package configs, which cannot change
during a session, by their path; a ConfigStore node by the stored node (storing a new one gives a new key). The kept config is shared, never changed: Hydra reads it while it builds the
defaults list, and when it composes, a config placed under a package is deep-copied by OmegaConf.update as Hydra
embeds it; one merged at the root as it is (the primary config, a `@package _global_` experiment) is deep-copied
here first, since that merge takes its nodes into the composed config, which overrides then change.

And at each node of the defaults tree Hydra builds a config of the choices made so far, which only an interpolated
default (`- db: ${other}`) reads; mtlrun's configs have none. Here it is built when one first reads it, which
gives the same config: nothing changes the choices between the point Hydra builds it and the first read.

Hydra deep-copies its repository of config sources for each composition, ConfigStore included; here the copy is
shallow (the method it guards against only binds a new list of sources). And a composition is kept whole, keyed by
its defaults list and the identity of each file in it: compositions that differ only in values (`seed=1`,
`data.n_train=16`) merge the files once, then each gets a deep copy before Hydra applies its overrides. Where a
composition parts from a kept one (at the first default they differ in), the merge of the defaults before that
point is kept too, and later compositions that share them start from it: of tests/weighting/test_matrix.py's
arch x weighting grid, each merges only the files from arch on. That took a composition of 48 such grid cells
from 95-193 ms to 67-84 ms (3 alternating rounds, on a machine shared with other work: median ratio 0.69).

tests/cli/test_configs.py checks that compose() gives what Hydra as shipped gives (as_shipped()), hydra node and
flags included, from the kept compositions too. Composing the shipped configs takes 0.51x the time of Hydra as
shipped for 20 compositions of distinct group choices, 0.18x for 20 that differ only in values (median of 5
alternating rounds each, one thread). In tests/weighting/test_matrix.py (135 compositions, -n0) the time spent
composing went from 27.0 s to 17.1 s against the previous version of this module, which kept only the files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys

from hydra._internal import defaults_list
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import CachingConfigRepository, ConfigRepository
from hydra._internal.hydra import Hydra
from hydra.core.default_element import InputDefault
from hydra.core.object_type import ObjectType
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, flag_override
from omegaconf.errors import OmegaConfBaseException

ORIGINAL_GET_MODE = Hydra.get_mode
ORIGINAL_LOAD_CONFIG = ConfigRepository.load_config
ORIGINAL_EMBED = ConfigLoaderImpl._embed_result_config
ORIGINAL_INTERPOLATION_MAP = defaults_list._create_interpolation_map
ORIGINAL_RESOLVE = InputDefault._resolve_interpolation_impl
ORIGINAL_COMPOSE = ConfigLoaderImpl._compose_config_from_defaults_list
_loaded: dict[tuple, tuple] = {}  # a file's identity -> (its ConfigResult, the ConfigStore node it came from)
_composed: dict[tuple, object] = {}
_prefixes: dict[tuple, object] = {}  # {first part of a kept composition's key: the merge of those defaults}


def _get_mode(self, config_name, overrides):
    if any("mode" in override for override in overrides):
        return ORIGINAL_GET_MODE(self, config_name, overrides)
    return None


def _load_config(self, config_path):
    source = self._find_object_source(config_path=config_path, object_type=ObjectType.CONFIG)
    # by name, as Hydra tests its sources: its plugin scan loads the class a second time, under the same name
    kind, held = type(source).__name__, None
    if kind == "FileConfigSource":
        path = os.path.realpath(os.path.join(source.path, source._normalize_file_name(config_path)))
        try:
            stat = os.stat(path)
        except OSError:
            return ORIGINAL_LOAD_CONFIG(self, config_path)
        # config_path too: a result's defaults list is relative to the group it was loaded as (one file can be two)
        key = (config_path, path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
    elif kind == "ImportlibResourcesConfigSource":  # an installed package's configs (Hydra's own)
        key = (kind, source.path, config_path)
    elif kind == "StructuredConfigSource":  # a ConfigStore node: the stored node itself (held, so its id stays its)
        try:
            held = source.store._load(source._normalize_file_name(config_path))
        except Exception:  # not there: Hydra says so
            return ORIGINAL_LOAD_CONFIG(self, config_path)
        key = (kind, source.provider, source.path, config_path, id(held))
    else:
        return ORIGINAL_LOAD_CONFIG(self, config_path)
    if key not in _loaded:
        _loaded[key] = (ORIGINAL_LOAD_CONFIG(self, config_path), held)
    result = copy.copy(_loaded[key][0])  # its own result object (Hydra sets attributes of it), the config shared
    result.memo_key = key
    return result


def _embed_result_config(result, package_override):
    package = result.header["package"] if package_override is None else package_override
    if package:  # OmegaConf.update sets a deep copy of the config under its package
        return ORIGINAL_EMBED(result, package_override)
    result = copy.copy(result)  # merged at the root as it is: the merge would take the shared config's nodes
    result.config = copy.deepcopy(result.config)
    return result


class _ChoicesWhenRead:
    """_create_interpolation_map's config, built when an interpolated default first reads it."""

    def __init__(self, *args):
        self.args, self.built = args, None

    def get(self):
        if self.built is None:
            self.built = ORIGINAL_INTERPOLATION_MAP(*self.args)
        return self.built


def _resolve_interpolation_impl(self, known_choices, val):
    if isinstance(known_choices, _ChoicesWhenRead):
        known_choices = known_choices.get()
    return ORIGINAL_RESOLVE(self, known_choices, val)


def _caching_repository(self, delegate):
    # Hydra deep-copies the repository (and with it the whole ConfigStore) so that initialize_sources leaves the
    # original alone; that method only binds a new list of new sources, which a shallow copy allows as well
    self.delegate = copy.copy(delegate)
    self.cache = {}


def _compose_config_from_defaults_list(self, defaults, repo):
    # The whole composition, kept by what it is made of: each default's place and the identity of its file
    key = []
    for default in defaults:
        loaded = repo.load_config(config_path=default.config_path)  # the repo's result of this composition
        if getattr(loaded, "memo_key", None) is None:
            return ORIGINAL_COMPOSE(self, defaults, repo)
        key.append((dataclasses.astuple(default), loaded.memo_key))
    key = tuple(key)
    if key not in _composed:
        _composed[key] = _merge(self, defaults, repo, key)
    return copy.deepcopy(_composed[key])  # Hydra then sets flags, applies the overrides and fills hydra.runtime


def _merge(self, defaults, repo, key: tuple):
    """Hydra's merge of the defaults in order (ConfigLoaderImpl._compose_config_from_defaults_list), started from
    the longest kept merge of a first part of them. Where this composition parts from one kept earlier (the first
    default they differ in), the merge of what they share is kept for the next one that shares it."""
    shared = max((_common_length(key, other) for other in _composed), default=0)
    start = max((n for n in range(1, shared + 1) if key[:n] in _prefixes), default=0)
    cfg = copy.deepcopy(_prefixes[key[:start]]) if start else OmegaConf.create()
    with flag_override(cfg, "no_deepcopy_set_nodes", True):
        for n in range(start, len(defaults)):
            if n == shared and n > start:
                kept = copy.deepcopy(cfg)
                kept._set_flag("no_deepcopy_set_nodes", None)  # as it is outside this loop
                _prefixes[key[:n]] = kept
            loaded = self._load_single_config(default=defaults[n], repo=repo)
            try:
                cfg.merge_with(loaded.config)
            except OmegaConfBaseException as e:
                raise ConfigCompositionException(f"In '{defaults[n].config_path}': {type(e).__name__} raised while"
                                                 f" composing config:\n{e}").with_traceback(sys.exc_info()[2])
    _strip_defaults(cfg)
    return cfg


def _common_length(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _strip_defaults(cfg) -> None:
    # what Hydra does to the composed config: remove the defaults lists left in its nodes
    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none():
            return
        with flag_override(cfg, ["readonly", "struct"], False):
            if cfg._get_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS"):
                cfg._set_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS", None)
                cfg.pop("defaults", None)
        for _key, value in cfg.items_ex(resolve=False):
            _strip_defaults(value)


# (owner, attribute, replacement); Hydra's own stays in ORIGINALS
PATCHES = [(Hydra, "get_mode", _get_mode),
           (ConfigRepository, "load_config", _load_config),
           (CachingConfigRepository, "__init__", _caching_repository),
           (defaults_list, "_create_interpolation_map", _ChoicesWhenRead),
           (InputDefault, "_resolve_interpolation_impl", _resolve_interpolation_impl),
           (ConfigLoaderImpl, "_embed_result_config", staticmethod(_embed_result_config)),
           (ConfigLoaderImpl, "_compose_config_from_defaults_list", _compose_config_from_defaults_list)]
ORIGINALS = [(owner, name, vars(owner)[name]) for owner, name, _ in PATCHES]


def _set(patches) -> None:
    for owner, name, value in patches:
        setattr(owner, name, value)


def install() -> None:
    _set(PATCHES)


@contextlib.contextmanager
def as_shipped():
    """Hydra as it ships, for the test that compares its compositions with these."""
    _set(ORIGINALS)
    try:
        yield
    finally:
        _set(PATCHES)
