"""Build the object a config node's `_target_` names, logged, with a failure that names the config key.

A `_partial_: true` node (optim, scheduler, arch) is built in two steps: instantiate_node gives the callable,
and the code that knows the missing arguments (the parameters, total_steps, the tasks) calls it through
call_node, so that the target's own checks of its values (SGD: `nesterov` needs momentum) end the run as a
config problem naming the keys, not as a traceback."""

from __future__ import annotations

import importlib
import logging
import re

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from mtlrun.errors import ConfigError, MtlrunError, UsageError

log = logging.getLogger("mtlrun")


class TargetNotFound(ImportError):
    """A `_target_` that names no object (`broken` False: `'torch.optim' has no 'Nope'`), or whose module is
    there but fails to import (`broken` True: a package it needs is missing, a bug in it). The message is one
    line, naming the part of the dotted name that fails."""

    def __init__(self, target: str, reason: str, broken: bool = False):
        super().__init__(reason)
        self.target, self.broken = target, broken


def locate(target: str):
    """The object a dotted `_target_` names: its modules imported from the top down as far as they exist, then
    attributes; only a module's own import runs (nothing is called). The one way mtlrun looks a `_target_` up
    (validation, the trust check, the builder, inference), so a name fails the same way everywhere."""
    parts = str(target).split(".")
    obj, i = None, 0
    while i < len(parts):
        module = ".".join(parts[: i + 1])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a package the module needs
                raise TargetNotFound(target, f"{module} fails to import ({type(exc).__name__}: {exc})",
                                     broken=True) from exc
            break  # no such module: the rest are attributes
        except Exception as exc:  # noqa: BLE001 - whatever the module's own code raises
            raise TargetNotFound(target, f"{module} fails to import ({type(exc).__name__}: {exc})",
                                 broken=True) from exc
        i += 1
    if obj is None:
        raise TargetNotFound(target, f"no module named '{parts[0]}'")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            raise TargetNotFound(target, f"'{'.'.join(parts[:j])}' has no '{parts[j]}'")
        obj = getattr(obj, parts[j])
    return obj


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


# What a constructor raises for values it refuses (torch.optim: ValueError; `fused` with `foreach`: RuntimeError)
CONSTRUCTOR_ERRORS = (ValueError, TypeError, RuntimeError)


def constructor_problem(key: str, node: DictConfig, exc: Exception) -> str:
    """`optim: Nesterov momentum requires ... (optim.momentum=0, optim.nesterov=true)`: the constructor's own
    words, then the values of `node` it names (a key, or its singular: `betas` for "beta parameter"), or all of
    them when it names none."""
    from mtlrun.schema import show

    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    values = {str(k): v for k, v in node.items() if not str(k).startswith("_")}
    words = re.sub(r"[^a-z0-9]+", " ", detail.lower()).split()
    text = " ".join(words)

    def named(name: str) -> bool:
        spaced = name.lower().replace("_", " ")
        return any(re.search(rf"\b{re.escape(form)}\b", text) for form in {spaced, spaced.rstrip("s")} if form)

    shown = [k for k in values if named(k)] or list(values)
    listed = ", ".join(f"{key}.{k}={show(values[k])}" for k in shown)
    return f"{key}: {detail}" + (f" ({listed})" if listed else "")


def call_node(built, key: str, node: DictConfig, *args, **kwargs):
    """`built(*args, **kwargs)` for the callable instantiate_node made of a `_partial_` node; the values the
    target refuses become a ConfigError naming `key` and those values."""
    try:
        return built(*args, **kwargs)
    except CONSTRUCTOR_ERRORS as exc:
        raise ConfigError([constructor_problem(key, node, exc)]) from exc
