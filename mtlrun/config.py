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
RESERVED_TASK_KEYS = ("only",)  # keys of the tasks group that are settings, not tasks


def config_dir() -> Path:
    """configs/ at the repo top (editable install) or shipped inside the package (wheel install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"mtlrun's configs are missing: looked in {here / 'configs'} and {here.parent / 'configs'}")


def config_groups() -> dict[str, list[str]]:
    root = config_dir()
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(root.iterdir()) if d.is_dir() and d.name != "hydra" and not d.name.startswith("_")}


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


def task_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The tasks a run trains, {name: node}: every task of cfg.tasks, or the ones `tasks.only` names.

    The one place that reads the tasks group: everything that iterates tasks goes through it, so the
    reserved keys (`only`) are never mistaken for a task.
    """
    nodes = {str(name): node for name, node in cfg.tasks.items() if name not in RESERVED_TASK_KEYS}
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
    try:
        tasks = task_configs(cfg) if isinstance(cfg.tasks, DictConfig) else {}
    except UsageError as exc:  # tasks.only names a task the preset does not have
        p.append(str(exc))
        tasks = None
    if tasks == {}:
        p.append("tasks: no tasks configured; pick a tasks preset (e.g. tasks=multidigits)")
    for name, task in (tasks or {}).items():
        if not isinstance(task, DictConfig) or "_target_" not in task:
            p.append(f"tasks.{name}: needs a `_target_` such as mtlrun.tasks.Classification")
        elif "weight" in task and (not isinstance(task.weight, (int, float)) or task.weight < 0):
            p.append(f"tasks.{name}.weight={task.weight}: must be a number >= 0")
    if p:
        raise ConfigError(p)


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
        if key.startswith("hydra.") or key in ("resume", "checkpoint", *skip):
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
