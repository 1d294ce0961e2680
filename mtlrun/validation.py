"""Check the values a user types, all at once (torchtune style), before anything is built.

validate_train / validate_eval: the trainer section against its schema (mtlrun/schema.py; the keys it lacks
get their defaults), the data, optim and scheduler values the schema knows, the seed, the tasks group, and
every `_target_` node's keys against its target's signature (check_targets). Each problem is one line
naming the key and what is valid; together they end the run as one ConfigError.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtlrun import distributed, schema
from mtlrun.build import SUPPLIED
from mtlrun.checks import is_int, is_number
from mtlrun.engine.ddp import sync_batchnorm_problem
from mtlrun.engine.device import resolve_device
from mtlrun.engine.trainer_config import TrainerConfig
from mtlrun.errors import ConfigError, Problems, UsageError
from mtlrun.instantiate import CONSTRUCTOR_ERRORS, TargetNotFound, constructor_problem, locate
from mtlrun.schema import RESERVED_TASK_KEYS
from mtlrun.task_selection import task_configs
from mtlrun.weighting.base import accumulates_exactly

log = logging.getLogger("mtlrun")

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def validate_train(cfg: DictConfig, from_checkpoint: bool = False) -> None:
    """`mtlrun train`: every problem of `cfg` at once, as one ConfigError.

    check_targets imports the config's targets, so for a checkpoint's config call this only once the
    checkpoint is trusted (mtlrun.trust). from_checkpoint: the config comes from a checkpoint (resume),
    whose trainer keys this version does not know are logged and ignored instead of refused.
    """
    problems = config_problems(cfg, from_checkpoint)
    problems += training_problems(cfg)
    if problems:
        raise ConfigError(problems)


def validate_eval(cfg: DictConfig, editable: tuple[str, ...], options: list[str] = ()) -> None:
    """`mtlrun eval` (predict, export): the checkpoint's config with the user's overrides, by the same rules
    as train, listed with `options`, the problems of the command's own options (split, output, tolerance...).

    A problem with a key eval may change (`editable`) is an error; one with a value only the checkpoint set
    (e.g. a trainer value an older mtlrun accepted) cannot be fixed from eval's command line: a warning."""
    problems = config_problems(cfg, from_checkpoint=True)
    errors = [*options, *(p for p in problems if _problem_key(p).startswith(editable))]
    for problem in problems:
        if problem not in errors:
            log.warning(f"the checkpoint's config: {problem} (eval cannot change it; going on)")
    if errors:
        raise ConfigError(errors)


def training_problems(cfg: DictConfig) -> list[str]:
    """What only training reads: accumulation against the weighting, sync_batchnorm against the device."""
    trainer, weighting = cfg.get("trainer"), cfg.get("weighting")
    if not isinstance(trainer, DictConfig):
        return []
    p = Problems()
    accumulate = trainer.get("accumulate", 1)
    if is_int(accumulate) and accumulate > 1 and isinstance(weighting, DictConfig) and "_target_" in weighting:
        try:
            method = locate(str(weighting._target_))
        except TargetNotFound:
            method = None  # check_targets says so
        reason = method.accumulation_problem(weighting.get("grad_on")) if hasattr(method, "accumulation_problem") \
            else None
        if reason:
            p.add(f"trainer.accumulate={accumulate}: weighting={method.method_name()} {reason}, so {accumulate} "
                  f"micro-batches would not make the step of one {accumulate} times larger batch; use "
                  f"trainer.accumulate=1 with a larger data.batch_size, or a weighting that accumulates exactly: "
                  f"{accumulates_exactly()}")
    if trainer.get("sync_batchnorm") is True:
        dist = distributed.dist_info()
        try:
            device = resolve_device(str(trainer.get("device", "auto")), dist.local_rank)
        except UsageError:
            device = None  # trainer.device names a device that is not here: the trainer says so
        problem = device is not None and sync_batchnorm_problem(device, dist.enabled)
        if problem:
            p.add(problem)
    return p.lines()


def _problem_key(problem: str) -> str:
    return problem.split(":", 1)[0].split("=", 1)[0]


def config_problems(cfg: DictConfig, from_checkpoint: bool = False) -> list[str]:
    p = Problems()
    unknown = Problems() if from_checkpoint else None
    if isinstance(cfg.get("trainer"), DictConfig):
        p.extend(schema.check(cfg.trainer, TrainerConfig, "trainer", unknown=unknown))
        schema.with_defaults(cfg.trainer, TrainerConfig)
    else:
        p.add(f"trainer={cfg.get('trainer')}: must be a group of keys; pick trainer=default")
    for line in unknown.lines() if unknown is not None else []:
        log.warning(f"the checkpoint's config: {line} (from another mtlrun version? ignored)")
    if isinstance(cfg.get("data"), DictConfig):
        sources = cfg.data.get("sources")  # data=mixture: each source is a data config of its own
        if isinstance(sources, DictConfig):  # and the mixture's own loader keys are null for "each source's own"
            own = [k for k in cfg.data if k != "sources" and OmegaConf.select(cfg.data, str(k)) is not None]
            p.extend(schema.check(OmegaConf.masked_copy(cfg.data, own), schema.Data, "data", closed=False))
            for name, node in sources.items():
                if isinstance(node, DictConfig):
                    p.extend(schema.check(node, schema.Data, f"data.sources.{name}", closed=False))
        else:
            p.extend(schema.check(cfg.data, schema.Data, "data", closed=False))
    if not is_int(cfg.get("seed")) or cfg.seed < 0:
        p.add(f"seed={cfg.get('seed')}: must be an integer >= 0")
    _check_tasks(cfg, p)
    p.extend(check_targets(cfg))
    reported = {_problem_key(line) for line in p.lines()}
    p.extend(line for key, line in non_finite_problems(cfg)
             if not any(key == r or key.startswith((f"{r}.", f"{r}[")) for r in reported))
    return p.lines()


def non_finite_problems(node, key: str = ""):
    """(key, problem) for every NaN or infinite number anywhere in the config (the hydra node aside): no
    option of mtlrun means anything with one, and a NaN compares False with every bound, so the checks of
    the sections would let it through to fail (or silently train on NaN) after the model is built."""
    if isinstance(node, DictConfig):
        for k in node:
            if key or k != "hydra":
                yield from non_finite_problems(_value(node, k), f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from non_finite_problems(_value(node, i), f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        yield key, f"{key}={node}: must be a finite number (NaN and infinity are not valid values of any option)"


def _value(node, key):
    """node[key], or None where it is an interpolation that does not resolve (the sections' checks say so)."""
    try:
        return node[key]
    except OmegaConfBaseException:  # an unresolvable interpolation: not this check's business
        return None


def _check_tasks(cfg: DictConfig, p: Problems) -> None:
    """The tasks group's own values. With from_data the tasks come from the data, which is not built here:
    the entries are checked as overrides, and tasks.only when build_tasks knows the data's targets."""
    if not isinstance(cfg.tasks, DictConfig):
        p.add("tasks: no tasks configured; pick a tasks preset (e.g. tasks=multidigits)")
        return
    from_data = cfg.tasks.get("from_data", False)
    if not isinstance(from_data, bool):
        p.add(f"tasks.from_data={from_data}: must be true (one task per data target) or false")
        from_data = False
    if from_data:
        tasks = {str(n): t for n, t in cfg.tasks.items() if n not in RESERVED_TASK_KEYS}
    else:
        try:
            tasks = task_configs(cfg, targets=None)
        except UsageError as exc:  # tasks.only names a task the preset does not have
            p.add(str(exc))
            return
        if not tasks:
            p.add("tasks: no tasks configured; pick a tasks preset (e.g. tasks=multidigits, or tasks=from_data "
                  "for one task per target of the data)")
    for name, task in tasks.items():
        if not isinstance(task, DictConfig) or ("_target_" not in task and not from_data):
            p.add(f"tasks.{name}: needs a `_target_` such as mtlrun.tasks.Classification")
        elif "weight" in task and (isinstance(task.weight, bool) or not isinstance(task.weight, (int, float))
                                   or task.weight < 0):
            p.add(f"tasks.{name}.weight={task.weight}: must be a number >= 0")


# ------------------------------------------------------------------------ `_target_` nodes vs signatures
def check_targets(cfg: DictConfig) -> list[str]:
    """Every `_target_` node's keys against its target's signature, and the optim and scheduler values,
    before anything is built: `optim.lrr: torch.optim.AdamW takes no argument 'lrr'; valid: lr, ...`.

    Imports each target (module-level code of the target's module runs): for a checkpoint's config, only
    once the checkpoint is trusted (mtlrun.trust)."""
    problems = Problems()
    checked = {}  # optim and scheduler, when each of their keys and values passed
    for key, node in _target_nodes(cfg):
        before = problems.total()
        params = _parameters(key, node, problems)
        if key == "optim":
            problems.extend(_check_numbers(node, schema.Optim, key, params, low=0))
        elif key == "scheduler":
            problems.extend(_check_numbers(node, schema.Scheduler, key, params, low=None))
        if key in ("optim", "scheduler") and problems.total() == before:
            checked[key] = node
    problems.extend(_construction_problems(checked))
    return problems.lines()


STAND_IN_TOTAL_STEPS = 1000


def _construction_problems(nodes: dict[str, DictConfig]) -> list[str]:
    """The optimizer and the scheduler built as build_trainer builds them, their constructors checking the
    values together (SGD: `nesterov` needs momentum > 0 and no dampening), which no per-key check sees. The
    model does not exist yet: a stand-in parameter (torch.optim's constructors check values, not the
    parameters) and a stand-in total_steps; what only the real ones show (a parameter's shape, its device),
    build_optimizer reports the same way."""
    if "optim" not in nodes:
        return []
    stand_in = [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}]
    optimizer, problem = _try_building("optim", nodes["optim"], stand_in)
    if optimizer is not None and "scheduler" in nodes:
        _, problem = _try_building("scheduler", nodes["scheduler"], optimizer, total_steps=STAND_IN_TOTAL_STEPS)
    return [problem] if problem else []


def _try_building(key: str, node: DictConfig, *args, **kwargs) -> tuple[object, str | None]:
    """(what the `_partial_` node builds from args, None), or (None, the problem with its values)."""
    try:
        return instantiate(node)(*args, **kwargs), None
    except CONSTRUCTOR_ERRORS as exc:
        return None, constructor_problem(key, node, exc)
    except UsageError as exc:  # an mtlrun target's own check
        return None, str(exc)
    except Exception:  # noqa: BLE001 - not a value problem (e.g. hydra's): the build reports it, naming the key
        return None, None


def _target_nodes(node, key: str = ""):
    """(key, node) of every DictConfig with a `_target_` under `node`, depth first (hydra's node aside)."""
    if isinstance(node, DictConfig):
        if "_target_" in node and key:
            yield key, node
        for k in node:
            if key or k != "hydra":
                yield from _target_nodes(node[k], f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _target_nodes(item, f"{key}[{i}]")


def _parameters(key: str, node: DictConfig, problems: Problems) -> dict | None:
    """{name: inspect.Parameter} the target takes by keyword, None when it takes any keyword (or cannot be
    inspected); a key of `node` it does not take is added to `problems`."""
    target = str(node._target_)
    try:
        obj = locate(target)
    except TargetNotFound as exc:
        if exc.broken:
            return None  # e.g. it needs a package that is not installed: build says so, if it builds it at all
        problems.add(f"{key}._target_={target}: cannot import it ({exc}); give the dotted path of a class "
                     f"or function, e.g. a `_target_` from mtlrun's configs")
        return None
    params = _keyword_parameters(obj)
    if params is None:
        return None
    supplied = SUPPLIED.get(key, ())
    valid = [name for name in params if name not in supplied]
    for name in node:
        name = str(name)
        if name not in HYDRA_KEYS and name not in params:
            close = schema.did_you_mean(name, valid)
            hint = f"; {close}" if close.startswith("did you") else ""
            problems.add(f"{key}.{name}: {target} takes no argument '{name}'; valid: {', '.join(valid)}{hint}")
    return params


def _keyword_parameters(obj) -> dict | None:
    """The parameters `obj` takes by keyword. A class of mtlrun whose __init__ takes **kwargs passes them on
    to its base class (MultiDigits -> DataModule, Binary -> Multilabel -> Task): its bases' parameters are
    added until one takes no **kwargs. Anything else with **kwargs takes any keyword: None."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if inspect.isclass(obj) and obj.__module__.startswith("mtlrun."):
        chain = [base.__init__ for base in obj.__mro__ if "__init__" in vars(base)]
    else:
        chain = [obj]
    params: dict = {}
    for fn in chain:
        if fn is object.__init__:
            return None
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        params.update({n: p for n, p in signature.parameters.items() if p.kind in named and n != "self"})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return params
    return None


def _check_numbers(node: DictConfig, rules: type, key: str, params: dict | None, low: float | None) -> list[str]:
    """The values `rules` (a schema) knows; any other number, or a value whose default is a number, must be
    a finite number (>= low when low is given)."""
    problems = Problems()
    problems.extend(schema.check(node, rules, key, closed=False))
    known = schema.schema_fields(rules)
    bound = "" if low is None else f" >= {low}"
    for name, value in node.items():
        name = str(name)
        if name in known or name in HYDRA_KEYS or isinstance(value, bool):
            continue
        default = params[name].default if params and name in params else None
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        values = list(value) if isinstance(value, ListConfig) else [value]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if (numeric_default and not is_number(value)) or any(not is_number(v) or (low is not None and v < low)
                                                              for v in numbers):
            problems.add(f"{key}.{name}={schema.show(value)}: must be a finite number{bound}")
    return problems.lines()
