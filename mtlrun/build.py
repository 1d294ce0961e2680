"""Compose -> instantiate: turn a validated config into data, tasks, model and weighting, and those into a
running Trainer.

`build_components` is shared by `train` and `eval`, so a checkpoint's config rebuilds exactly the model that
was trained; `build_trainer` is the one path from a config to a Trainer, used by `mtlrun train`, the tests and
the benchmarks alike, so they all exercise what `mtlrun train` runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omegaconf import DictConfig, OmegaConf, open_dict

from mtlrun.instantiate import TargetNotFound, call_node, instantiate_node, locate
from mtlrun.task_selection import all_task_configs, task_configs
from mtlrun import distributed
from mtlrun.data.base import DataSpec, ModalityInfo
from mtlrun.engine.logger.base import Logger, check_on_error, check_trackers
from mtlrun.engine.trainer import Trainer
from mtlrun.errors import Problems, UsageError
from mtlrun.models.base import MultiTaskModel
from mtlrun.models.multimodal import FusedEncoder


# What the builder hands each section's target itself (below, and the Trainer the scheduler's): the target's
# signature lists these, a config does not set them, so validation.check_targets leaves them out of the keys it
# calls valid. tests/cli/test_validation.py records what a build passes and checks it is this.
SUPPLIED = {"optim": ("params",), "scheduler": ("optimizer", "total_steps"),
            "arch": ("make_encoder", "tasks", "modality"), "fusion": ("dims", "token_dims", "models", "tasks")}


@dataclass
class Components:
    data: object
    tasks: dict
    model: object
    weighting: object


def build_tasks(cfg: DictConfig, spec) -> dict:
    """One task per entry of task_configs, checked against the data's targets.

    With `tasks.from_data=true` the entries come from the data's targets; they are written into
    cfg.tasks, so everything that reads the config afterwards (e.g. a task's weight) sees ordinary tasks.
    """
    if cfg.tasks.get("from_data"):
        _expand_from_data(cfg, spec)
    tasks, problems = {}, Problems()
    for name, node in task_configs(cfg, spec.targets).items():
        if name not in spec.targets:
            problems.add(f"tasks.{name}: the data '{cfg.data._target_.rsplit('.', 1)[-1]}' has no target "
                            f"'{name}'; available: {', '.join(spec.targets)}")
            continue
        task = instantiate_node(node, f"tasks.{name}")
        task.name = name
        problems.extend(task.check(spec.targets[name]))
        tasks[name] = task
    problems.raise_if_any()
    return tasks


def _expand_from_data(cfg: DictConfig, spec) -> None:
    import mtlrun.tasks

    nodes = all_task_configs(cfg, spec.targets)
    problems = Problems()
    for name in task_configs(cfg, spec.targets):  # the selected ones: tasks.only can leave a target out
        module, _, cls = str(nodes[name].get("_target_", "")).rpartition(".")
        if module == "mtlrun.tasks" and not hasattr(mtlrun.tasks, cls) and name in spec.targets:
            problems.add(f"tasks.from_data: the data's target '{name}' is {spec.targets[name].kind}, which needs "
                            f"mtlrun.tasks.{cls}; this version of mtlrun has no such task type. Give it a task "
                            f"class with +tasks.{name}._target_=<your.TaskClass>, or leave it out with tasks.only")
    problems.raise_if_any()
    with open_dict(cfg.tasks):
        for name, node in nodes.items():
            cfg.tasks[name] = node


def encoder_config(cfg: DictConfig, kind: str) -> tuple[DictConfig, str]:
    """The `backbone.<kind>` node; a checkpoint from before per-modality encoders has one image backbone."""
    backbone = cfg.backbone
    if "_target_" in backbone and kind == "image":
        return backbone, "backbone"
    if kind not in backbone:
        raise UsageError(f"backbone.{kind}: the data has a {kind} input but no {kind} encoder is configured; "
                         f"pick one with backbone/{kind}=<option> (see `mtlrun --help`)")
    return backbone[kind], f"backbone.{kind}"


def build_encoder(cfg: DictConfig, modality: str, info: ModalityInfo):
    node, key = encoder_config(cfg, info.kind)
    encoder = instantiate_node(node, key, **info.args)
    for attr in ("out_dim", "token_dim"):
        if not isinstance(getattr(encoder, attr, None), int):
            raise UsageError(f"{key}: {type(encoder).__name__} (for the {modality} input) has no integer "
                             f"`{attr}`; encoders follow mtlrun.models.backbone.base.Encoder")
    return encoder


def build_model(cfg: DictConfig, tasks: dict, spec: DataSpec) -> MultiTaskModel:
    """One modality: arch(encoder). Several: arch(FusedEncoder(encoders, fusion)), or LateFusion of one
    arch(encoder) per modality when the fusion combines predictions."""
    arch = instantiate_node(cfg.arch, "arch")
    modalities = spec.modalities
    if len(modalities) == 1:
        modality, info = next(iter(modalities.items()))
        return call_node(arch, "arch", cfg.arch, make_encoder=lambda: build_encoder(cfg, modality, info), tasks=tasks,
                         modality=modality)

    fusion_node = cfg.fusion
    # a late fusion declares it (mtlrun.models.fusion.base): it gets whole models, not encodings
    if getattr(_target_of(fusion_node, "fusion"), "combines_predictions", False):
        models = {m: call_node(arch, "arch", cfg.arch, make_encoder=lambda m=m, info=info: build_encoder(cfg, m, info),
                               tasks=tasks, modality=m) for m, info in modalities.items()}
        return instantiate_node(fusion_node, "fusion", models=models, tasks=tasks)

    def make_encoder() -> FusedEncoder:
        encoders = {m: build_encoder(cfg, m, info) for m, info in modalities.items()}
        fusion = instantiate_node(fusion_node, "fusion", dims={m: e.out_dim for m, e in encoders.items()},
                       token_dims={m: e.token_dim for m, e in encoders.items()})
        return FusedEncoder(encoders, fusion)

    return call_node(arch, "arch", cfg.arch, make_encoder=make_encoder, tasks=tasks, modality=None)


def _target_of(node: DictConfig, key: str):
    """The class (or factory) `node._target_` names, located as validation and the trust check locate it."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise UsageError(f"{key}: needs a `_target_` (the class to build), got {node!r}")
    try:
        return locate(str(node._target_))
    except TargetNotFound as exc:
        raise UsageError(f"{key}: cannot import {node._target_}: {exc}") from exc


def build_components(cfg: DictConfig, data_state: dict | None = None, data=None) -> Components:
    """`data_state`: the data module's state from a checkpoint (e.g. a vocabulary), applied before anything
    reads the data, so eval sees the inputs exactly as training did. `data`: a data module the caller built
    and set up already (`mtlrun predict` reading new rows with the checkpoint's state)."""
    if data is None:
        # not recursive: data.transforms' `_target_`s are built by mtlrun.data.transforms, torchvision.transforms.v2
        # only
        data = instantiate_node(cfg.data, "data", _recursive_=False)
        if data_state:
            data.load_state_dict(data_state)
    spec = data.spec
    tasks = build_tasks(cfg, spec)
    validate_monitor(str(cfg.trainer.monitor), tasks)
    model = build_model(cfg, tasks, spec)
    weighting = instantiate_node(cfg.weighting, "weighting")
    weighting.setup(tasks, model)  # before the optimizer is built: learned weights are parameters too
    if hasattr(data, "check_weighting"):  # data=mixture: a weighting may need what its batches do not give
        data.check_weighting(weighting, bool(cfg.get("trainer", {}).get("conflict", False)))
    return Components(data, tasks, model, weighting)


def validate_monitor(monitor: str, tasks: dict) -> None:
    """trainer.monitor against the built tasks' metrics (the tasks are known only once the data is)."""
    if monitor in ("auto", "mean"):
        return
    key = monitor.removeprefix("val/")
    task, _, metric = key.partition("/")
    valid = ["auto", "mean"] + [f"val/{t}/{m}" for t, task_ in tasks.items() for m in ("loss", *task_.metric_names)]
    if task not in tasks or (metric != "loss" and metric not in tasks[task].metric_names):
        raise UsageError(f"trainer.monitor={monitor}: not a validation metric; valid: {', '.join(valid)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: DictConfig, parts: Components) -> torch.optim.Optimizer:
    """The `optim` group over the model's parameters; learned loss weights (UW's log-variances, GradNorm's
    weights) go in their own group without weight decay, which would pull them to 0."""
    groups = [{"params": list(parts.model.parameters())}]
    weighting_params = list(parts.weighting.parameters())
    if weighting_params:
        groups.append({"params": weighting_params, "weight_decay": 0.0})
    # validation built it on a stand-in parameter already; what only the real parameters show (their shape,
    # their device) is a config problem too
    return call_node(instantiate_node(cfg.optim, "optim"), "optim", cfg.optim, groups)


def build_loggers(cfg: DictConfig) -> list:
    """The `logger` group's experiment trackers (`logger=[csv,tensorboard]`), in the order listed; none for
    `logger=[]`. Built on every rank (the Trainer starts rank 0's only)."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        tracker = instantiate_node(node, f"logger.{name}")
        if isinstance(tracker, Logger):
            tracker.option = name  # in its messages, and the key of its run id in checkpoints
        check_on_error(tracker, name)
        loggers.append(tracker)
    return loggers


def build_trainer(cfg: DictConfig, run_dir: str | Path, *, data_state: dict | None = None,
                  parts: Components | None = None, dist: distributed.DistInfo | None = None,
                  total_steps: int | None = None) -> Trainer:
    """A Trainer for a validated config: the same initial weights on every rank (`seed`), the components
    (or `parts`, for a caller that builds its own model or data), optimizer and scheduler, then each rank
    its own dropout/augmentation stream (`seed + rank`). The Trainer carries the resolved config into its
    checkpoints; it is resolved before anything is built, as config.yaml is. `total_steps`: the optimizer
    steps the LR schedule spans, for a run that is not `trainer.max_epochs` epochs (mtlrun affinity)."""
    dist = dist or distributed.dist_info()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg)  # first: a tracker whose package is missing stops the run before the data is built
    if dist.is_main:  # and one whose store or server cannot be reached (the others never start theirs)
        loggers = check_trackers(loggers, Path(run_dir))
    seed_everything(cfg.seed)
    parts = parts or build_components(cfg, data_state=data_state)
    optimizer = build_optimizer(cfg, parts)
    scheduler_factory = instantiate_node(cfg.scheduler, "scheduler")
    seed_everything(cfg.seed + dist.rank)
    return Trainer(model=parts.model, tasks=parts.tasks, weighting=parts.weighting, optimizer=optimizer,
                   scheduler_factory=scheduler_factory, data=parts.data, config=resolved, run_dir=run_dir,
                   dist=dist, loggers=loggers, total_steps=total_steps)
