"""Where the configs live, validation that lists every problem at once, and logged instantiation."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlrun.errors import ConfigError, MtlrunError, UsageError

log = logging.getLogger("mtlrun")

PRECISIONS = ("32", "bf16", "16")
DEVICES = ("auto", "cpu", "cuda", "mps")
RESERVED_TASK_KEYS = ("only", "from_data")  # keys of the tasks group that are settings, not tasks
# tasks.from_data=true: the task type built for each kind of data target (mtlrun.data.base.TargetInfo)
DEFAULT_TASKS = {"classification": "Classification", "binary": "Binary", "multilabel": "Multilabel",
                 "regression": "Regression", "segmentation": "Segmentation", "depth": "Depth", "normals": "Normals"}


def config_dir() -> Path:
    """configs/ at the repo top (editable install) or shipped inside the package (wheel install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"mtlrun's configs are missing: looked in {here / 'configs'} and {here.parent / 'configs'}")


def config_groups() -> dict[str, list[str]]:
    """{group: options}; nested groups by path, e.g. "backbone/image": ["cnn", "resnet18", ...]."""
    root = config_dir()
    groups = {}
    for d in sorted(root.rglob("*")):
        rel = d.relative_to(root)
        if not d.is_dir() or rel.parts[0] == "hydra" or any(part.startswith("_") for part in rel.parts):
            continue
        options = sorted(p.stem for p in d.glob("*.yaml"))
        if options:
            groups[rel.as_posix()] = options
    return groups


def build(node: DictConfig, key: str, **kwargs):
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_limit(cfg: DictConfig, key: str, problems: list[str]) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None:
        return
    if _is_int(v) and v >= 1:
        return
    if isinstance(v, float) and 0 < v <= 1:
        return
    problems.append(f"{key}={v}: must be null (all), an int >= 1 (batches) or a float in (0, 1] (fraction)")


def task_configs(cfg: DictConfig, targets: dict | None = None) -> dict[str, DictConfig]:
    """The tasks a run trains, {name: node}: every task of cfg.tasks, or the ones `tasks.only` names.

    The one place that reads the tasks group: everything that iterates tasks goes through it, so the
    reserved keys (`only`, `from_data`) are never mistaken for a task. With `tasks.from_data=true`, see
    all_task_configs (`targets`: the data's {name: TargetInfo}; None builds the data module to ask it).
    """
    nodes = all_task_configs(cfg, targets)
    only = cfg.tasks.get("only")
    if only is None:
        return nodes
    names = [only] if isinstance(only, str) else [str(n) for n in only]
    unknown = [n for n in names if n not in nodes]
    if unknown or not names:
        shown = f"[{','.join(names)}]"
        problem = f"unknown task(s) {', '.join(unknown)}" if unknown else "selects no task"
        raise UsageError(f"tasks.only={shown}: {problem}; valid tasks: {', '.join(nodes)} "
                         f"(tasks.only=null trains them all)")
    return {name: node for name, node in nodes.items() if name in names}


def all_task_configs(cfg: DictConfig, targets: dict | None = None) -> dict[str, DictConfig]:
    """Every task of the tasks group, `tasks.only` aside.

    With `tasks.from_data=true`: one task per target of the data, in the data's order, of the default type
    for its kind (DEFAULT_TASKS) with weight 1; an entry of the tasks group with the same name is merged
    over it (e.g. `+tasks.digit.weight=0.5`), or replaces it when it has its own `_target_`.
    """
    nodes = {str(name): node for name, node in cfg.tasks.items() if name not in RESERVED_TASK_KEYS}
    if not cfg.tasks.get("from_data"):
        return nodes
    if targets is None:
        targets = build(cfg.data, "data").full_spec.targets
    generated = {name: _task_from_data(info, nodes.get(name)) for name, info in targets.items()}
    return {**generated, **{name: node for name, node in nodes.items() if name not in targets}}


def _task_from_data(info, override: DictConfig | None) -> DictConfig:
    """The default task node for a data target (TargetInfo), with the user's entry merged over it."""
    if override is not None and "_target_" in override:
        return override
    node = {"_target_": f"mtlrun.tasks.{DEFAULT_TASKS.get(info.kind, info.kind)}"}
    if info.kind in ("classification", "segmentation"):
        node["num_classes"] = info.num_classes
    elif info.kind == "multilabel":
        node["num_labels"] = info.dim
    elif info.kind == "regression":
        node["dim"] = info.dim
    node.update(weight=1.0, auxiliary=False)
    return OmegaConf.merge(node, override) if override is not None else OmegaConf.create(node)


def validate_train(cfg: DictConfig) -> None:
    """Check the values a user types, all at once (torchtune style), before anything is built."""
    p: list[str] = []
    t = cfg.trainer

    def need_int(key, value, low):
        if not _is_int(value) or value < low:
            p.append(f"{key}={value}: must be an integer >= {low}")

    need_int("trainer.max_epochs", t.max_epochs, 1)
    need_int("trainer.accumulate", t.accumulate, 1)
    need_int("trainer.log_every_n_steps", t.log_every_n_steps, 1)
    need_int("data.batch_size", cfg.data.batch_size, 1)
    if cfg.data.get("eval_batch_size") is not None:
        need_int("data.eval_batch_size", cfg.data.eval_batch_size, 1)
    need_int("data.num_workers", cfg.data.get("num_workers", 0), 0)
    need_int("seed", cfg.seed, 0)
    if str(t.precision) not in PRECISIONS:
        p.append(f"trainer.precision={t.precision}: valid: {', '.join(PRECISIONS)}")
    device = str(t.device)
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        p.append(f"trainer.device={device}: valid: {', '.join(DEVICES)} (or cuda:N)")
    if t.grad_clip is not None and (isinstance(t.grad_clip, bool) or not isinstance(t.grad_clip, (int, float))
                                    or t.grad_clip <= 0):
        p.append(f"trainer.grad_clip={t.grad_clip}: must be null (off) or a number > 0")
    _check_limit(cfg, "trainer.limit_train_batches", p)
    _check_limit(cfg, "trainer.limit_eval_batches", p)
    patience = t.early_stopping.patience
    if patience is not None:
        need_int("trainer.early_stopping.patience", patience, 1)
    if str(t.get("monitor_mode", "auto")) not in ("auto", "max", "min"):
        p.append(f"trainer.monitor_mode={t.monitor_mode}: valid: auto, max, min")
    _check_tasks(cfg, p)
    if p:
        raise ConfigError(p)


def _check_tasks(cfg: DictConfig, p: list[str]) -> None:
    """The tasks group's own values. With from_data the tasks come from the data, which is not built here:
    the entries are checked as overrides, and tasks.only when build_tasks knows the data's targets."""
    if not isinstance(cfg.tasks, DictConfig):
        p.append("tasks: no tasks configured; pick a tasks preset (e.g. tasks=multidigits)")
        return
    from_data = cfg.tasks.get("from_data", False)
    if not isinstance(from_data, bool):
        p.append(f"tasks.from_data={from_data}: must be true (one task per data target) or false")
        from_data = False
    if from_data:
        tasks = {str(n): t for n, t in cfg.tasks.items() if n not in RESERVED_TASK_KEYS}
    else:
        try:
            tasks = task_configs(cfg)
        except UsageError as exc:  # tasks.only names a task the preset does not have
            p.append(str(exc))
            return
        if not tasks:
            p.append("tasks: no tasks configured; pick a tasks preset (e.g. tasks=multidigits, or tasks=from_data "
                     "for one task per target of the data)")
    for name, task in tasks.items():
        if not isinstance(task, DictConfig) or ("_target_" not in task and not from_data):
            p.append(f"tasks.{name}: needs a `_target_` such as mtlrun.tasks.Classification")
        elif "weight" in task and (isinstance(task.weight, bool) or not isinstance(task.weight, (int, float))
                                   or task.weight < 0):
            p.append(f"tasks.{name}.weight={task.weight}: must be a number >= 0")


def validate_monitor(monitor: str, tasks: dict) -> None:
    if monitor == "auto":
        return
    key = monitor.removeprefix("val/")
    task, _, metric = key.partition("/")
    valid = ["auto"] + [f"val/{t}/{m}" for t, task_ in tasks.items() for m in ("loss", *task_.metric_names)]
    if task not in tasks or (metric != "loss" and metric not in tasks[task].metric_names):
        raise UsageError(f"trainer.monitor={monitor}: not a validation metric; valid: {', '.join(valid)}")


def apply_overrides(base: dict, current: DictConfig, overrides: list[str], allowed: tuple[str, ...] | None,
                    what: str, skip: tuple[str, ...] = ()) -> DictConfig:
    """Apply the value overrides the user typed (e.g. `trainer.max_epochs=4`) to a checkpoint's config.

    Group choices (e.g. `optim=sgd`) cannot change for a checkpointed model and are refused.
    """
    cfg = OmegaConf.create(base)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key in ("resume", "checkpoint") or key.split(".")[0] in skip:
            continue
        value = OmegaConf.select(current, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)) and "." not in key:
            raise UsageError(f"{override}: {what} keeps the checkpoint's '{key}' choice; "
                             f"override single values instead (e.g. trainer.max_epochs=8)")
        if allowed is not None and not key.startswith(allowed):
            raise UsageError(f"{override}: {what} accepts overrides of {', '.join(allowed)} only")
        if value is None and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise UsageError(f"{override}: the checkpoint's config has no key '{key}'")
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg
