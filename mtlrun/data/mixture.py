"""`data=mixture`: several datasets, one model (docs/mixture.md).

Each source is any data config (multidigits, scenes, table, ...), built by its own data module: it keeps its
inputs, transforms, splits and fitted state. Its targets become tasks under their own names, or
`<source>_<target>` with `prefix: true`, or one task over several sources when `span` names it. Every batch
the mixture hands out is an ordinary batch of the data-flow contract holding every task: the tasks of other
sources get a placeholder target with `label_mask` False, exactly as partial labels, so every loss, metric,
weighting and architecture works unchanged; an input of another source is zeros with `modality_mask` False.

`sampling` (mtlrun.data.mixture_sampling) says what a training step reads: `all` one batch of every source
(the Trainer runs one forward per source and each task's loss is on its own source's batch: `{"sources":
{name: batch}}`), or one source per step (per micro-batch under accumulation) drawn `proportional`ly to the
sources' training sizes, `uniform`ly, or by `temperature` (p_i ∝ n_i^(1/T)). Evaluation reads every
source's split in turn (round robin), so each task is measured on its own source's samples only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig

from mtlrun.data.base import SPLITS, DataModule, DataSpec, collate
from mtlrun.data.mixture_sampling import (SAMPLINGS, MixtureEpoch, RoundRobin, draw_counts, draw_sources,
                                          placeholder, source_probabilities)
from mtlrun.errors import MtlrunError, Problems, UsageError

log = logging.getLogger("mtlrun")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class Source:
    name: str
    module: DataModule
    tasks: dict[str, str]  # the source's target name -> the task name


class Mixture(DataModule):
    """`sources`: {name: data config}. `targets`: {source: [target, ...]} the targets a source brings (default:
    all of them). `prefix`: name every task `<source>_<target>`. `span`: target names that are one task over
    every source that has them (the same labels, e.g. the same class list). `sampling`, `temperature`,
    `steps_per_epoch` (null: the largest source's batches for `all`, else all sources' batches together):
    how training draws. `source`: read one source only (eval / predict on that source). `batch_size`,
    `eval_batch_size`, `num_workers`: null keeps each source's own, a value sets every source's."""

    name = "mixture"

    def __init__(self, sources, sampling: str = "proportional", temperature: float = 2.0,
                 steps_per_epoch: int | None = None, targets=None, prefix: bool = False, span=(),
                 source: str | None = None, batch_size: int | None = None, eval_batch_size: int | None = None,
                 num_workers: int | None = None):
        super().__init__()
        p = Problems()
        if sampling not in SAMPLINGS:
            p.add(f"data.sampling={sampling}: unknown; valid: {', '.join(SAMPLINGS)}")
        if sampling == "temperature" and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                          or not temperature > 0):
            p.add(f"data.temperature={temperature}: must be a number > 0 (p_i ∝ n_i^(1/T): 1 is proportional, "
                  f"larger flattens towards uniform)")
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch < 1):
            p.add(f"data.steps_per_epoch={steps_per_epoch}: must be an integer >= 1, or null (one pass over the data)")
        if not isinstance(prefix, bool):
            p.add(f"data.prefix={prefix}: must be true (tasks named <source>_<target>) or false")
        self.sampling, self.temperature, self.steps_per_epoch = sampling, temperature, steps_per_epoch
        self.sources = self._build_sources(sources, targets, prefix is True, _names(span, "data.span", p), p)
        if source is not None and (not isinstance(source, str) or source not in self.sources):
            p.add(f"data.source={source}: not a source; valid: {', '.join(self.sources)} (or null: all of them)")
        loader_keys = {"batch_size": (batch_size, 1), "eval_batch_size": (eval_batch_size, 1),
                       "num_workers": (num_workers, 0)}
        for key, (value, least) in loader_keys.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                p.add(f"data.{key}={value}: must be an integer >= {least}, or null (each source's own)")
        p.raise_if_any()
        self.source = source
        for key, (value, _) in loader_keys.items():  # a value sets every source's (e.g. eval's data.batch_size)
            for src in self.sources.values() if value is not None else ():
                setattr(src.module, key, value)
        self._spec = self._merged_spec()

    # ----------------------------------------------------------------------------------- building
    def _build_sources(self, nodes, targets, prefix: bool, span: list[str], p: Problems) -> dict[str, Source]:
        if not isinstance(nodes, (DictConfig, dict)) or not nodes:
            p.add("data.sources: give one data config per source, e.g. data.sources={big: {_target_: ...}}")
            return {}
        targets = targets if targets is not None else {}
        if not isinstance(targets, (DictConfig, dict)):
            p.add(f"data.targets={targets}: give {{source: [target, ...]}} (null: every target of every source)")
            targets = {}
        for name in targets:
            if name not in nodes:
                p.add(f"data.targets.{name}: not a source; valid: {', '.join(map(str, nodes))}")
        sources, owners = {}, {}
        for name, node in nodes.items():
            name = str(name)
            if not _NAME.fullmatch(name):
                p.add(f"data.sources.{name}: a source name is letters, digits, _ and - (it prefixes task names)")
                continue
            module = _build_source(node, name)
            available = list(module.spec.targets)
            chosen = targets.get(name) if name in targets else available
            chosen = _names(chosen, f"data.targets.{name}", p)
            unknown = [t for t in chosen if t not in available]
            if unknown:
                p.add(f"data.targets.{name}: the source has no target {', '.join(unknown)}; available: "
                      f"{', '.join(available) or 'none'}")
            elif not chosen:
                p.add(f"data.sources.{name}: brings no target, so it would train no task; give it targets "
                      f"(data.targets.{name}=[...], available: {', '.join(available) or 'none'}) or leave it out")
            tasks = {t: t if (t in span or not prefix) else f"{name}_{t}" for t in chosen if t in available}
            for target, task in tasks.items():
                owners.setdefault(task, []).append((name, module.spec.targets[target]))
            sources[name] = Source(name, module, tasks)
        for task, owned in owners.items():
            if len(owned) > 1 and task not in span:
                names = [n for n, _ in owned]
                p.add(f"data.sources: task '{task}' comes from sources {', '.join(names)}; set data.prefix=true "
                      f"(tasks {', '.join(f'{n}_{task}' for n in names)}) or data.span=[{task}] if the labels mean "
                      f"the same thing")
            elif len(owned) > 1 and len({info for _, info in owned}) > 1:
                p.add(f"data.span: '{task}' differs between sources ({'; '.join(f'{n}: {i}' for n, i in owned)}); "
                      f"a task spans sources only when their labels are alike")
        for task in span:
            if len(owners.get(task, ())) < 2:
                p.add(f"data.span: '{task}' is a target of {len(owners.get(task, ()))} source(s); span names a "
                      f"target that two or more sources have")
        return sources

    def _merged_spec(self) -> DataSpec:
        """Every source's inputs and tasks. One input name in two sources is one encoder's input: the same kind
        and settings, its size aside (a 32 px and a 64 px image go through one CNN)."""
        modalities, targets, owner, p = {}, {}, {}, Problems()
        for src in self.sources.values():
            spec = src.module.spec
            for m, info in spec.modalities.items():
                first = modalities.get(m)
                if first is None:
                    modalities[m], owner[m] = info, src.name
                elif first.kind != info.kind or _settings(first) != _settings(info):
                    p.add(f"data.sources.{src.name}: its input '{m}' ({info.kind}, {_settings(info)}) differs from "
                          f"source {owner[m]}'s ({first.kind}, {_settings(first)}); one encoder reads both")
            targets.update({task: spec.targets[t] for t, task in src.tasks.items()})
        p.raise_if_any()
        return DataSpec(modalities, targets)

    full_spec = property(lambda self: self._spec)

    @property
    def multi_forward(self) -> bool:
        """Whether a training batch is several sources' batches (one forward each): the Trainer then
        averages the DDP gradients itself, as for a weighting with several backward passes."""
        return self.sampling == "all" and len(self._active) > 1

    @property
    def _active(self) -> dict[str, Source]:
        return {self.source: self.sources[self.source]} if self.source else self.sources

    def check_weighting(self, weighting, conflict: bool) -> None:
        """sampling=all runs each source's batch through the model on its own: no one representation holds every
        task's loss, so a representation-level method would compare gradients of different samples, which never
        meet. Parameter-level methods work: each task's gradient reaches the shared parameters."""
        method = f"weighting.grad_on=representation ({type(weighting).__name__})"
        if self.multi_forward and (conflict or getattr(weighting, "grad_on", None) == "representation"):
            raise UsageError(f"{'trainer.conflict=true' if conflict else method} needs every task's loss on one "
                             f"shared representation, but data.sampling=all runs each source's batch through the "
                             f"model on its own (different samples, no common representation); use "
                             f"weighting.grad_on=parameters, or data.sampling=proportional|uniform|temperature")

    def build(self):
        raise UsageError("data=mixture has no single dataset: its sources are read through its loaders")

    @cached_property
    def _templates(self) -> dict[str, torch.Tensor]:
        """One training sample's target per task (its own source's): the shape and dtype of placeholders."""
        p = Problems()
        for src in self.sources.values():
            for split in SPLITS:
                if len(src.module.dataset(split)) == 0:
                    p.add(f"data.sources.{src.name}: its {split} split is empty; every source needs samples in "
                          f"train, val and test")
            if not p and src.module.train_batches(1) == 0:
                p.add(f"data.sources.{src.name}: no training batch (data.sources.{src.name}.batch_size larger than "
                      f"its training split with drop_last)")
        p.raise_if_any()
        out = {}
        for src in self.sources.values():
            train = src.module.dataset("train")
            first = train.__getitems__([0]) if hasattr(train, "__getitems__") else collate([train[0]])
            out.update({task: first["targets"][t][0] for t, task in src.tasks.items() if task not in out})
        return out

    # ------------------------------------------------------------------------------------ batches
    def _pad(self, batch: dict, src: Source) -> dict:
        """`batch` of source `src` as a batch of the mixture: its targets under their task names, every other
        task with a placeholder and label_mask False, every other input zeros with modality_mask False."""
        given = batch["inputs"]
        size = len(next(iter(given.values())))
        inputs, modality_mask = dict(given), {}
        missing = [m for m in self._spec.modalities if m not in given]
        for m in missing:
            info = self._spec.modalities[m]
            inputs[m] = torch.zeros(size, *info.shape, dtype=torch.long if info.kind == "text" else torch.float32)
        if missing or "modality_mask" in batch:
            had = batch.get("modality_mask", {})
            modality_mask = {m: had.get(m, torch.ones(size, dtype=torch.bool)) if m in given else
                             torch.zeros(size, dtype=torch.bool) for m in inputs}
        own_masks = batch.get("label_mask", {})
        targets = {task: batch["targets"][t] for t, task in src.tasks.items()}
        label_mask = {task: own_masks[t] for t, task in src.tasks.items() if t in own_masks}
        for task in self._spec.targets:
            if task not in targets:
                targets[task] = placeholder(self._templates[task], self._spec.targets[task].kind, given, size)
                label_mask[task] = torch.zeros(size, dtype=torch.bool)
        out = {"inputs": inputs, "targets": targets, "label_mask": label_mask, "source": src.name,
               "tasks": tuple(src.tasks.values())}
        if modality_mask:
            out["modality_mask"] = modality_mask
        return out

    def train_transform(self):
        """Each source's own training transforms, on its own batches (under its own target names)."""
        transforms = {name: src.module.train_transform() for name, src in self.sources.items()}
        if all(t is None for t in transforms.values()):
            return None
        return lambda batch: self._transform(batch, transforms)

    def _transform(self, batch: dict, transforms: dict) -> dict:
        src, transform = self.sources[batch["source"]], transforms[batch["source"]]
        if transform is None:
            return batch
        masks = batch.get("modality_mask", {})
        own = {"inputs": {m: batch["inputs"][m] for m in src.module.spec.modalities},
               "targets": {t: batch["targets"][task] for t, task in src.tasks.items()},
               "label_mask": {t: batch["label_mask"][task] for t, task in src.tasks.items()
                              if task in batch["label_mask"]}}
        if masks:
            own["modality_mask"] = {m: masks[m] for m in own["inputs"]}
        done = transform(own)
        out = {**batch, "inputs": {**batch["inputs"], **done["inputs"]},
               "targets": {**batch["targets"], **{task: done["targets"][t] for t, task in src.tasks.items()}},
               "label_mask": {**batch["label_mask"], **{src.tasks[t]: m for t, m in done.get("label_mask", {}).items()
                                                        if t in src.tasks}}}
        if "modality_mask" in done:
            out["modality_mask"] = {**masks, **done["modality_mask"]}
        return out

    def train_batches(self, world_size: int = 1) -> int:
        """Steps (batches) per epoch on each rank: data.steps_per_epoch, else one pass over the sources."""
        self._templates  # noqa: B018 - the sources' splits are checked before anything counts on them
        if self.steps_per_epoch is not None:
            return int(self.steps_per_epoch)
        counts = [src.module.train_batches(world_size) for src in self._active.values()]
        return max(counts) if self.sampling == "all" else sum(counts)

    def probabilities(self) -> dict[str, float]:
        """Each source's chance per step (sampling other than `all`)."""
        sizes = [len(src.module.dataset("train")) for src in self._active.values()]
        return dict(zip(self._active, source_probabilities(sizes, self.sampling, self.temperature)))

    def _draws(self, seed: int, epoch: int, world_size: int) -> list[int] | None:
        """The source index of each step of the epoch (None for sampling=all: every source every step)."""
        if self.sampling == "all":
            return None
        return draw_sources(list(self.probabilities().values()), seed=seed, epoch=epoch,
                            steps=self.train_batches(world_size))

    def train_loader(self, *, epoch: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                     skip_batches: int = 0):
        steps, names = self.train_batches(world_size), list(self._active)
        draws = self._draws(seed, epoch, world_size)
        if draws is not None and rank == 0 and skip_batches == 0:
            counts = draw_counts(draws, names)
            log.info(f"data.sampling={self.sampling}: epoch {epoch + 1}'s {steps} steps draw "
                     + ", ".join(f"{n} {c} ({c / steps:.1%})" for n, c in counts.items()))
        return MixtureEpoch(self, names, draws, steps, dict(epoch=epoch, seed=seed, device=device, rank=rank,
                                                      world_size=world_size), skip_batches)

    def epoch_row(self, epoch: int, seed: int, batches: int, world_size: int = 1) -> dict:
        """`draws/<source>`: the training batches (micro-batches) read of each source in the epoch's first
        `batches` steps, those the epoch trained (trainer.limit_train_batches counted)."""
        draws = self._draws(seed, epoch, world_size)
        if draws is None:
            return {f"draws/{name}": batches for name in self._active}
        return {f"draws/{name}": n for name, n in draw_counts(draws[:batches], list(self._active)).items()}

    def eval_loader(self, split: str, *, device: torch.device, rank: int = 0, world_size: int = 1,
                    batch_size: int | None = None):
        self._templates  # noqa: B018 - the sources' splits are checked first
        loaders = {name: src.module.eval_loader(split, device=device, rank=rank, world_size=world_size,
                                                batch_size=batch_size) for name, src in self._active.items()}
        return RoundRobin(self, loaders)

    # ------------------------------------------------------------------- per task / per source
    def _owner(self, task: str) -> tuple[Source, str]:
        for src in self.sources.values():
            for target, name in src.tasks.items():
                if name == task:
                    return src, target
        raise KeyError(task)

    def _one_source(self, what: str) -> Source:
        if len(self._active) > 1:
            raise UsageError(f"{what}: data=mixture reads several sources; pick one with data.source=<name> "
                             f"(valid: {', '.join(self.sources)})")
        return next(iter(self._active.values()))

    def sample_ids(self, split: str, column: str | None = None) -> list:
        return self._one_source("the sample ids").module.sample_ids(split, column)

    def tagged_words(self, split: str):
        return self._one_source("the words of the samples").module.tagged_words(split)

    def class_names(self, task: str):
        src, target = self._owner(task)
        return src.module.class_names(target)

    def target_scale(self, task: str):
        src, target = self._owner(task)
        return src.module.target_scale(target)

    # ------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {name: src.module.state_dict() for name, src in self.sources.items()}

    def load_state_dict(self, state: dict) -> None:
        unknown = [name for name in state if name not in self.sources]
        problems = [f"holds a state for source {name!r}, which the config does not have" for name in unknown]
        problems += self.state_problems(state)
        if problems:
            raise UsageError(f"data: the checkpoint's data state: {'; '.join(problems)}")
        for name, sub in state.items():
            self.sources[name].module.load_state_dict(sub)

    @classmethod
    def state_problems(cls, state: dict, config: dict | None = None) -> list[str]:
        """Each source's state against its own data module; a state of a source the config lacks is damage."""
        nodes = (config or {}).get("sources") if isinstance(config, (dict, DictConfig)) else None
        problems = []
        for name, sub in state.items():
            if not isinstance(sub, dict):
                problems.append(f"source {name!r}: holds {type(sub).__name__}, not a mapping")
                continue
            if nodes is None:
                continue
            node = nodes.get(name) if isinstance(nodes, (dict, DictConfig)) else None
            if not isinstance(node, (dict, DictConfig)):
                problems.append(f"holds a state for source {name!r}, which the config does not have")
                continue
            try:  # the trust check let every `_target_` of the config through already
                module = get_class(str(node.get("_target_")))
            except Exception:  # noqa: BLE001 - building the source says what is wrong with its `_target_`
                continue
            if hasattr(module, "state_problems"):
                problems += [f"source {name}: {line}" for line in module.state_problems(sub, node)]
        return problems


def _build_source(node, name: str) -> DataModule:
    """A source's data module: built here (a mixture's `data` node is built without recursion, as every data
    node is), or already built by a recursive instantiate."""
    if isinstance(node, DictConfig) and str(node.get("_target_")).endswith(".Mixture") or isinstance(node, Mixture):
        raise UsageError(f"data.sources.{name}: a mixture cannot be a source; list its sources here instead")
    if isinstance(node, DataModule):
        return node
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UsageError(f"data.sources.{name}: needs a data config with a `_target_` (e.g. the contents of "
                         f"configs/data/multidigits.yaml), got {node!r}")
    log.info(f"data.sources.{name}: {node._target_}")
    try:
        module = instantiate(node, _recursive_=False)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, MtlrunError):
            raise exc.__cause__ from None
        raise UsageError(f"data.sources.{name}: cannot build {node._target_}: {exc.__cause__ or exc}") from exc
    if not isinstance(module, DataModule):
        raise UsageError(f"data.sources.{name}: {node._target_} is not a data module (mtlrun.data.base.DataModule)")
    return module


def _settings(info) -> dict:
    return {k: v for k, v in info.args.items() if k != "input_size"}


def _names(value, key: str, p: Problems) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, ListConfig)):
        p.add(f"{key}={value}: give a list of target names")
        return []
    return [str(v) for v in value]
