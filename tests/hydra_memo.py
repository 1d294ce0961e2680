"""Hydra's run without the composition it throws away (installed by tests/conftest.py).

A Hydra app composes its config twice: `Hydra.get_mode` composes the whole config only to read `hydra.mode`, then
the run composes it again. Composing mtlrun's config is most of what a tiny in-process CLI test costs, so in the
test process `get_mode` answers "not set" without composing unless an override names `hydra.mode`. That is what
the real get_mode returns for mtlrun's configs, which never set it (tests/cli/test_configs.py checks with the real
one, kept as ORIGINAL_GET_MODE); it also returns None when composing fails, and the run's own composition then
reports the error. Real processes (the e2e tests that start one, MTLRUN_TEST_SUBPROCESS=1) run Hydra unchanged.
(Keeping parsed YAML files between compositions was measured too: no faster, the deep copies cost what parsing
saved.)
"""

from __future__ import annotations

from hydra._internal.hydra import Hydra

ORIGINAL_GET_MODE = Hydra.get_mode


def _get_mode(self, config_name, overrides):
    if any("mode" in override for override in overrides):
        return ORIGINAL_GET_MODE(self, config_name, overrides)
    return None


def install() -> None:
    Hydra.get_mode = _get_mode
