"""Typed schemas of the config sections a user types most: every key, its type, what is valid, its doc.

Structured-config style: one dataclass field per key, the field's type annotation is the key's type and its
metadata says what is valid. `check(node, Schema, prefix)` lists every problem at once, each as
`key=value: what is valid` (the lines ConfigError prints).

- The trainer section's schema is closed and lives next to the Trainer (mtlrun/engine/trainer_config.py):
  it declares every key of configs/trainer/default.yaml (a test keeps the two equal), a key it does not
  declare is reported, and a key the node lacks takes the schema's default (`with_defaults`), so a
  checkpoint written before a key existed still loads.
- `Optim`, `Scheduler` and `Data` are open: which keys a node may have comes from its `_target_`'s signature
  (validation.check_targets); these schemas only say what is valid for the keys they know.
- The tasks group is open too: any key is a task, except its settings keys (RESERVED_TASK_KEYS).

The bottom layer (it imports only mtlrun.errors and mtlrun.checks): every layer may describe its config here.
"""

import difflib
import operator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Optional, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mtlrun.checks import is_int, is_number
from mtlrun.errors import Problems

PRECISIONS = ("32", "bf16", "16")
DEVICES = ("auto", "cpu", "cuda", "mps")
MONITOR_MODES = ("auto", "max", "min")
RESERVED_TASK_KEYS = ("only", "from_data")  # keys of the tasks group that are settings, not tasks
BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def setting(default, doc: str, *, ge=None, gt=None, le=None, lt=None, choices=None, null: str = "",
            rule: str = ""):
    """A schema field: `ge`/`gt`/`le`/`lt` bound a number, `choices` lists the valid values (compared as
    text, so 16 and "16" agree), `null` says what null means (a null-able key), `rule` names a check of
    RULES for values no bound describes."""
    meta = dict(doc=doc, ge=ge, gt=gt, le=le, lt=lt, choices=choices, null=null, rule=rule)
    if is_dataclass(default):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Optim:
    """The hyperparameters torch.optim's optimizers share; other numbers of an optim node must be >= 0."""

    lr: float = setting(None, "learning rate", gt=0)
    weight_decay: float = setting(None, "weight decay (decoupled for AdamW)", ge=0)
    momentum: float = setting(None, "SGD / RMSprop momentum", ge=0)
    dampening: float = setting(None, "SGD dampening", ge=0)
    eps: float = setting(None, "added to denominators", ge=0)
    alpha: float = setting(None, "RMSprop smoothing", ge=0)
    betas: list = setting(None, "Adam's moment decay rates", rule="betas")
    nesterov: bool = setting(None, "Nesterov momentum (SGD)")
    amsgrad: bool = setting(None, "AMSGrad variant (Adam, AdamW)")
    maximize: bool = setting(None, "maximize the objective")


@dataclass
class Scheduler:
    """mtlrun/engine/schedulers.py; the trainer supplies `total_steps`."""

    warmup_steps: int = setting(None, "optimizer steps of linear warm-up", ge=0)
    min_lr_ratio: float = setting(None, "cosine: the final lr as a fraction of the base lr", ge=0, le=1)
    milestones: list = setting(None, "multistep: where to decay, as fractions of training", rule="fractions")
    gamma: float = setting(None, "multistep: lr factor at each milestone", gt=0)


@dataclass
class Data:
    """The loader settings of mtlrun.data.base.DataModule and the split sizes of the generated datasets."""

    batch_size: int = setting(None, "training batch size", ge=1)
    eval_batch_size: Optional[int] = setting(None, "evaluation batch size", ge=1, null="data.batch_size")
    num_workers: int = setting(None, "DataLoader worker processes", ge=0)
    n_train: int = setting(None, "training samples", ge=1)
    n_val: int = setting(None, "validation samples", ge=1)
    n_test: int = setting(None, "test samples", ge=1)


def _limit(v) -> str | None:
    if (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1):
        return None
    return "must be null (all), an int >= 1 (batches) or a float in (0, 1] (fraction)"


def _device(v) -> str | None:
    v = str(v)
    if v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit()):
        return None
    return f"valid: {', '.join(DEVICES)} (or cuda:N)"


def _betas(v) -> str | None:
    ok = isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1), e.g. [0.9,0.999]"


def _fractions(v) -> str | None:
    ok = isinstance(v, (list, tuple, ListConfig)) and all(is_number(m) and 0 <= m <= 1 for m in v)
    return None if ok else "must be a list of fractions of training in [0, 1], e.g. [0.5,0.75]"


RULES = {"limit": _limit, "device": _device, "betas": _betas, "fractions": _fractions}


def valid_text(f) -> str:
    """What is valid for a field, as the error message says it."""
    m, kind = f.metadata, _base_type(f.type)
    if m["choices"]:
        text = f"valid: {', '.join(map(str, m['choices']))}"
    elif kind is bool:
        text = "must be true or false"
    elif kind in (int, float):
        noun = "an integer" if kind is int else "a finite number"
        bounds = [f"{sign} {m[k]}" for k, (sign, _) in BOUNDS.items() if m[k] is not None]
        text = f"must be {noun}" + (f" {' and '.join(bounds)}" if bounds else "")
    else:
        text = "must be a string"
    if m["null"]:
        text = text.replace("must be ", f"must be null ({m['null']}) or ", 1) if text.startswith("must be ") \
            else f"{text}, or null ({m['null']})"
    return text


def _base_type(annotation):
    """int for Optional[int]; None for a Union of several types (those fields have a rule)."""
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return get_origin(annotation) or annotation


def check_value(f, value) -> str | None:
    """None when `value` is valid for field `f`, else what is valid."""
    m = f.metadata
    if value is None and (m["null"] or m["rule"] == "limit"):
        return None
    if m["rule"]:
        return RULES[m["rule"]](value)
    kind = _base_type(f.type)
    if m["choices"]:
        ok = str(value) in map(str, m["choices"])
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = is_int(value)
    elif kind is float:
        ok = is_number(value)
    else:
        ok = isinstance(value, str)
    if ok and kind in (int, float):
        ok = all(m[k] is None or test(value, m[k]) for k, (_, test) in BOUNDS.items())
    return None if ok else valid_text(f)


def schema_fields(schema: type) -> dict:
    return {f.name: f for f in fields(schema)}


def show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(value)).replace("'", "")
    return str(value)


def check(node: DictConfig, schema: type, prefix: str, *, closed: bool = True,
          unknown: Problems | None = None) -> list[str]:
    """Every problem of `node` against `schema`, as `prefix.key=value: what is valid` lines.

    closed: a key the schema does not declare is a problem (with the closest declared key, if any), or goes
    to `unknown` when given (a checkpoint's config from another mtlrun version: a warning, not an error)."""
    problems = Problems()
    declared = schema_fields(schema)
    for name, value in node.items():
        name = str(name)
        f = declared.get(name)
        key = f"{prefix}.{name}"
        if f is None:
            if closed:
                (problems if unknown is None else unknown).add(unknown_key(key, list(declared)))
            continue
        if is_dataclass(f.type):
            if isinstance(value, DictConfig):
                problems.extend(check(value, f.type, key, closed=closed, unknown=unknown))
            else:
                problems.add(f"{key}={show(value)}: must be a group of keys: {', '.join(schema_fields(f.type))}")
            continue
        problem = check_value(f, value)
        if problem:
            problems.add(f"{key}={show(value)}: {problem}")
    return problems.lines()


def unknown_key(key: str, valid: list[str]) -> str:
    prefix, _, name = key.rpartition(".")
    return f"{key}: unknown key; {did_you_mean(name, valid, prefix + '.')}"


def did_you_mean(name: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean {prefix}{close[0]}?" if close else f"valid: {', '.join(valid)}"


def with_defaults(node: DictConfig, schema: type) -> None:
    """Add the keys a closed schema declares and `node` lacks, with their defaults (in place)."""
    with open_dict(node):
        for name, f in schema_fields(schema).items():
            if is_dataclass(f.type):
                if name not in node:
                    node[name] = {}
                if isinstance(node[name], DictConfig):
                    with_defaults(node[name], f.type)
            elif name not in node:
                node[name] = f.default if f.default is not MISSING else None


def defaults(schema: type) -> dict:
    """The schema's defaults as a plain dict (what configs/trainer/default.yaml must hold)."""
    return {name: defaults(f.type) if is_dataclass(f.type) else f.default for name, f in schema_fields(schema).items()}
