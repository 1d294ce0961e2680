"""Build the object a config node's `_target_` names, logged, with a failure that names the config key."""

from __future__ import annotations

import logging

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from mtlrun.errors import MtlrunError, UsageError

log = logging.getLogger("mtlrun")


def instantiate_node(node: DictConfig, key: str, **kwargs):
    """instantiate(node) with its `_target_` logged; failures become a UsageError naming `key`."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UsageError(f"{key}: needs a `_target_` (the class or function to build), got {node!r}")
    log.info(f"{key}: {node._target_}")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MtlrunError):
            raise cause from None
        detail = str(cause) if cause is not None else str(exc).splitlines()[0]
        raise UsageError(f"{key}: cannot build {node._target_}: {detail}") from exc
