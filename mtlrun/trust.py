"""A checkpoint's config is data, not code.

`mtlrun eval checkpoint=X` and `mtlrun train resume=X` rebuild the run from the config stored in X, and
Hydra's instantiate calls whatever a `_target_` names. A checkpoint may come from anyone, so before
anything is imported or built from it, every `_target_` in its config must be one that mtlrun ships for
that purpose, or be defined in a module under a prefix the user trusts on the command line
(`trusted_targets=[mypkg]`): a name is resolved to where its object is defined, so `mypkg.os.system` is refused.

What mtlrun ships for that purpose: a class under mtlrun's models/data/tasks/weighting or torch.optim that
subclasses the base of its kind (so `mtlrun.engine.records.atomic_write_text` or `mtlrun.tasks.os.system`,
both importable under `mtlrun.`, are refused), or a schedule factory from mtlrun.engine.schedulers. The
check runs on the stored strings first; only a target whose module is mtlrun's or torch's is imported to
look at what it is, and importing those runs no code from the checkpoint.

Interpolations (`${...}`) are refused too: a checkpoint stores its config resolved, and a resolver such
as `oc.env` would read the user's environment into the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

from mtlrun.errors import Problems, UsageError
from mtlrun.instantiate import TargetNotFound, locate

# module prefixes whose classes may be built from a checkpoint, when they subclass one of the bases below
SHIPPED_PREFIXES = ("mtlrun.models", "mtlrun.data", "mtlrun.tasks", "mtlrun.weighting", "torch.optim")
SCHEDULES_MODULE = "mtlrun.engine.schedulers"
# Sections of a checkpoint's config never built from it: the experiment trackers come from the command line of
# the run at hand (a resumed run's `logger=[...]`), so a checkpoint cannot choose where a run's metrics go.
NOT_FROM_CHECKPOINT = ("logger",)
NEVER_BUILT = ("mtlrun never builds this from a checkpoint (it is not a model, data module, task, weighting, "
               "optimizer or schedule)")


def _shipped_bases() -> tuple[type, ...]:
    import torch

    from mtlrun.data.base import DataModule
    from mtlrun.models.base import MultiTaskModel
    from mtlrun.tasks import Task

    return (DataModule, Task, MultiTaskModel, torch.nn.Module, torch.optim.Optimizer,
            torch.optim.lr_scheduler.LRScheduler)


def targets(node, key: str = "") -> Iterator[tuple[str, object]]:
    """Every (config key, `_target_` value) in a plain config container, depth first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key or "<root>", node["_target_"]
        for k, v in node.items():
            yield from targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from targets(v, f"{key}[{i}]")


def interpolations(node, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from interpolations(v, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield key, node


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _why_not_shipped(target: str) -> str | None:
    """None when `target` is a class (or schedule) mtlrun ships for building; otherwise the reason."""
    module = target.rpartition(".")[0]
    if not _under(module, ("mtlrun", "torch")):
        return "not code that mtlrun ships"
    if not (_under(module, SHIPPED_PREFIXES) or module == SCHEDULES_MODULE):
        return NEVER_BUILT
    try:
        obj = locate(target)
    except TargetNotFound:
        return "no such class in this mtlrun / torch"
    home = getattr(obj, "__module__", "") or ""
    if module == SCHEDULES_MODULE:
        if inspect.isfunction(obj) and home == SCHEDULES_MODULE and not obj.__name__.startswith("_"):
            return None
        return NEVER_BUILT
    if not inspect.isclass(obj) or not _under(home, ("mtlrun", "torch")) or not issubclass(obj, _shipped_bases()):
        return NEVER_BUILT
    return None


def _why_not_trusted(target: str, trusted: Sequence[str]) -> str | None:
    """None when `target`, named under a trusted prefix, is defined in a trusted module (or is a class mtlrun
    ships, re-exported); otherwise the reason. A trusted package is trusted for what it defines, not for what it
    imports: `mypkg.os.makedirs` is os.makedirs. Imports the trusted module, which runs only code the user
    trusts; calls nothing from the checkpoint."""
    try:
        obj = locate(target)
    except TargetNotFound as exc:  # a trusted module that fails to import, a name it does not have
        return f"cannot be imported ({exc})"
    home, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(home, str) and _under(home, trusted):
        return None
    real = f"{home}.{name}" if isinstance(home, str) and isinstance(name, str) else None
    if real is not None and _why_not_shipped(real) is None:
        return None
    return (f"it is {real or type(obj).__name__ + ' object'}, defined outside the trusted modules "
            f"({', '.join(trusted)}); trusting a package trusts the code it defines, not what it imports")


def without_trackers(config: dict) -> dict:
    """A checkpoint's config without the sections mtlrun never builds from a checkpoint (NOT_FROM_CHECKPOINT)."""
    return {k: v for k, v in config.items() if k not in NOT_FROM_CHECKPOINT} if isinstance(config, dict) else config


def _is_data_transform(key: str, target: str) -> bool:
    """A `data.transforms[i]` entry naming a torchvision.transforms.v2 class: mtlrun.data.transforms builds those
    itself, and nothing else (it looks the name up on torchvision.transforms.v2 and refuses a non-Transform)."""
    prefix = "torchvision.transforms.v2."
    return (key.startswith("data.transforms[") and target.startswith(prefix)
            and "." not in target[len(prefix):])


def check_checkpoint_config(config: dict, trusted: Sequence[str], source: str) -> None:
    """Refuse (exit 2) a checkpoint config naming code that is not shipped or trusted; builds nothing.

    `trusted`: module prefixes from the user's own command line or config (never from the checkpoint).
    `source`: how the user named the checkpoint, e.g. "checkpoint=runs/x/best.pt", for the message.
    """
    if not isinstance(config, dict):
        raise UsageError(f"{source}: the checkpoint's config is not a mapping")
    trusted = [str(p).rstrip(".") for p in trusted]
    config = without_trackers(config)  # never built from it
    problems = Problems()
    problems.extend(f"{key}={value!r}: a checkpoint's config is stored resolved; interpolations are refused"
                    for key, value in interpolations(config))
    for key, target in targets(config):
        if not isinstance(target, str) or not target.replace(".", "").replace("_", "").isalnum():
            problems.add(f"{key}._target_={target!r}: not a dotted Python name")
            continue
        if _is_data_transform(key, target):
            continue
        if _under(target.rpartition(".")[0], trusted):
            why = _why_not_trusted(target, trusted)
            if why is not None:
                problems.add(f"{key}._target_={target}: {why}")
            continue
        why = _why_not_shipped(target)
        if why is None:
            continue
        if _under(target, ("mtlrun", "torch")):  # trusting mtlrun or torch wholesale is never the fix
            problems.add(f"{key}._target_={target}: {why}")
        else:
            module = target.split(".")[0]
            problems.add(f"{key}._target_={target}: {why}; if you trust the checkpoint's author, "
                            f"add trusted_targets=[{module}]")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems.lines())
        raise UsageError(f"{source}: refused: the checkpoint's config names code that mtlrun does not build "
                         f"from a checkpoint; nothing was built or run ({problems.total()} problem(s)):\n{lines}")


# ------------------------------------------------------------- the rest of what a checkpoint or export holds
# The sections the model is rebuilt from (eval, predict, export, mtlrun.load); resume= builds the optimizer too.
REBUILT_FROM = ("data", "backbone", "arch", "tasks", "weighting", "trainer")
RESUMED_FROM = (*REBUILT_FROM, "optim", "scheduler")
HYDRA_FLAGS = {"_partial_": (lambda v: isinstance(v, bool), "true or false"),
               "_recursive_": (lambda v: isinstance(v, bool), "true or false"),
               "_convert_": (lambda v: str(v).lower() in ("none", "partial", "object", "all"),
                             "none, partial, object or all"),
               "_args_": (lambda v: isinstance(v, list), "a list")}
PARTS = {"config": "config", "model": "weights", "data": "data state"}  # how messages name a checkpoint's parts


def check_source(source: dict, trusted: Sequence[str], label: str, sections: Sequence[str] = REBUILT_FROM) -> None:
    """Everything a command checks in a checkpoint or an export before it builds anything from it (exit 2): the
    config's targets (check_checkpoint_config), the config sections the model is rebuilt from, finite weights,
    and a data state its data module accepts (`DataModule.state_problems`, e.g. a table's fitted statistics).

    `source`: {"config", "model", "data"} as checkpoint.load or inference.read_source give it; `files`, where
    read_source adds it, names the export's file of each part. `label`: how the user named it, e.g.
    "checkpoint=runs/x/best.pt". The low-level checkpoint.load checks none of this: tests and tools save and
    load minimal checkpoints."""
    config = source.get("config")
    if not isinstance(config, dict):
        raise UsageError(f"{_where(source, 'config', label)}: holds {type(config).__name__}, not a mapping of "
                         f"config sections")
    check_checkpoint_config(config, trusted, label)
    flags = list(_bad_hydra_flags(config))
    if flags:
        raise UsageError(f"{_where(source, 'config', label)}: {'; '.join(flags)} (Hydra's instantiate flags)")
    absent = [s for s in sections if not isinstance(config.get(s), dict)]
    if absent:
        what = "is empty" if not config else f"has no {', '.join(absent)} section{'s' * (len(absent) > 1)}"
        raise UsageError(f"{_where(source, 'config', label)}: {what}; the model is rebuilt from its "
                         f"{', '.join(sections)} sections, as `mtlrun train` writes them")
    _check_weights(source.get("model"), _where(source, "model", label))
    _check_data_state(config, source.get("data"), _where(source, "data", label))


def _bad_hydra_flags(node, key: str = "") -> Iterator[str]:
    """`key._partial_=[1]: must be true or false`, for each of Hydra's flags with a value instantiate refuses
    with a bare TypeError (mtlrun's own configs set them only to valid values)."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{key}.{k}" if key else str(k)
            if k in HYDRA_FLAGS and not HYDRA_FLAGS[k][0](v):
                yield f"{here}={v!r}: must be {HYDRA_FLAGS[k][1]}"
            yield from _bad_hydra_flags(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _bad_hydra_flags(v, f"{key}[{i}]")


def _where(source: dict, part: str, label: str) -> str:
    files = source.get("files")
    return f"{label}: {files[part]}" if files else f"{label}: the checkpoint's {PARTS[part]}"


def _check_weights(weights, where: str) -> None:
    import torch

    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise UsageError(f"{where}: not a mapping of parameter names to tensors")
    floating = [(k, v) for k, v in weights.items() if v.is_floating_point()]
    bad = [k for k, v in floating if not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UsageError(f"{where}: {len(bad)} of {len(floating)} model tensors hold NaN or inf ({shown}); mtlrun "
                         f"never saves such weights, so the file is damaged or was edited, and every prediction "
                         f"from it would be meaningless; use another checkpoint")


def _check_data_state(config: dict, state, where: str) -> None:
    """The data state against the data module the config names (a class the trust check let through)."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise UsageError(f"{where}: holds {type(state).__name__}, not a mapping")
    target = config["data"].get("_target_")
    try:
        data_class = locate(str(target))
    except TargetNotFound:
        return  # building the data says what is wrong with its `_target_`
    problems = data_class.state_problems(state, config["data"]) if hasattr(data_class, "state_problems") else []
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UsageError(f"{where}: {shown} (the preprocessing fitted on the training data, read back before any "
                         f"data is read with it)")
