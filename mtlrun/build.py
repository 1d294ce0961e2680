"""Compose -> instantiate: turn a resolved config into data, tasks, model and weighting.

Shared by `train` and `eval`, so a checkpoint's config rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from mtlrun.config import build, task_configs, validate_monitor
from mtlrun.errors import ConfigError, UsageError


@dataclass
class Components:
    data: object
    tasks: dict
    model: object
    weighting: object


def build_tasks(cfg: DictConfig, spec) -> dict:
    tasks, problems = {}, []
    for name, node in task_configs(cfg).items():
        if name not in spec.targets:
            problems.append(f"tasks.{name}: the data '{cfg.data._target_.rsplit('.', 1)[-1]}' has no target "
                            f"'{name}'; available: {', '.join(spec.targets)}")
            continue
        task = build(node, f"tasks.{name}")
        task.name = name
        problems += task.check(spec.targets[name])
        tasks[name] = task
    if problems:
        raise ConfigError(problems)
    return tasks


def build_model(cfg: DictConfig, tasks: dict, spec):
    if len(spec.modalities) != 1:
        raise UsageError(f"the data has modalities {', '.join(spec.modalities)}; the `backbone` group builds "
                         f"one image encoder, so pick a single-modality dataset")
    modality, shape = next(iter(spec.modalities.items()))

    def make_encoder():
        return build(cfg.backbone, "backbone", in_channels=shape[0], input_size=tuple(shape[1:]))

    arch = build(cfg.arch, "arch")
    return arch(make_encoder=make_encoder, tasks=tasks, modality=modality)


def build_components(cfg: DictConfig) -> Components:
    data = build(cfg.data, "data")
    tasks = build_tasks(cfg, data.spec)
    validate_monitor(str(cfg.trainer.monitor), tasks)
    model = build_model(cfg, tasks, data.spec)
    weighting = build(cfg.weighting, "weighting")
    weighting.setup(tasks, model)  # before the optimizer is built: learned weights are parameters too
    return Components(data, tasks, model, weighting)
