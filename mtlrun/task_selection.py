"""Which tasks a run trains: the tasks group's entries, or one per target of the data (`tasks.from_data`),
narrowed by `tasks.only`. The one place that reads the tasks group, so its settings keys
(RESERVED_TASK_KEYS: `only`, `from_data`) are never mistaken for a task."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlrun.errors import UsageError
from mtlrun.schema import RESERVED_TASK_KEYS

# tasks.from_data=true: the task type built for each kind of data target (mtlrun.data.base.TargetInfo)
DEFAULT_TASKS = {"classification": "Classification", "binary": "Binary", "multilabel": "Multilabel",
                 "regression": "Regression", "segmentation": "Segmentation", "depth": "Depth", "normals": "Normals",
                 "detection": "Detection", "tagging": "Tagging"}


def task_configs(cfg: DictConfig, targets: dict | None) -> dict[str, DictConfig]:
    """The tasks a run trains, {name: node}: every task of cfg.tasks, or the ones `tasks.only` names.

    `targets`: the data's {name: TargetInfo}, which `tasks.from_data=true` needs (see all_task_configs);
    None where the caller has no data, which only a config without from_data allows.
    """
    nodes = all_task_configs(cfg, targets)
    only = cfg.tasks.get("only")
    if only is None:
        return nodes
    if not isinstance(only, (str, ListConfig, list)):
        raise UsageError(f"tasks.only={only}: give a task name or a list of them, e.g. tasks.only=[left] "
                         f"(tasks.only=null trains them all)")
    names = [only] if isinstance(only, str) else [str(n) for n in only]
    unknown = [n for n in names if n not in nodes]
    if unknown or not names:
        shown = f"[{','.join(names)}]"
        problem = f"unknown task(s) {', '.join(unknown)}" if unknown else "selects no task"
        raise UsageError(f"tasks.only={shown}: {problem}; valid tasks: {', '.join(nodes)} "
                         f"(tasks.only=null trains them all)")
    return {name: node for name, node in nodes.items() if name in names}


def all_task_configs(cfg: DictConfig, targets: dict | None) -> dict[str, DictConfig]:
    """Every task of the tasks group, `tasks.only` aside.

    With `tasks.from_data=true`: one task per target of the data, in the data's order, of the default type
    for its kind (DEFAULT_TASKS) with weight 1; an entry of the tasks group with the same name is merged
    over it (e.g. `+tasks.digit.weight=0.5`), or replaces it when it has its own `_target_`.
    """
    nodes = {str(name): node for name, node in cfg.tasks.items() if name not in RESERVED_TASK_KEYS}
    if not cfg.tasks.get("from_data"):
        return nodes
    if targets is None:
        raise ValueError("tasks.from_data=true: the tasks come from the data's targets; pass them "
                         "(the data module's full_spec.targets)")
    generated = {name: _task_from_data(info, nodes.get(name)) for name, info in targets.items()}
    return {**generated, **{name: node for name, node in nodes.items() if name not in targets}}


def _task_from_data(info, override: DictConfig | None) -> DictConfig:
    """The default task node for a data target (TargetInfo), with the user's entry merged over it."""
    if override is not None and "_target_" in override:
        return override
    node = {"_target_": f"mtlrun.tasks.{DEFAULT_TASKS.get(info.kind, info.kind)}"}
    if info.kind in ("classification", "segmentation", "detection"):
        node["num_classes"] = info.num_classes
        if info.kind == "detection" and info.labels is not None:
            node["class_names"] = list(info.labels)  # they name the per-class metrics (map_<class>)
    elif info.kind == "multilabel":
        node["num_labels"] = info.dim
    elif info.kind == "regression":
        node["dim"] = info.dim
    elif info.kind == "tagging":
        node["num_tags"] = info.num_classes
    node.update(weight=1.0, auxiliary=False)
    return OmegaConf.merge(node, override) if override is not None else OmegaConf.create(node)
