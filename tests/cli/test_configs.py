"""Every shipped config composes, validates, builds, runs a forward pass and one optimizer step.

Parametrized by globbing configs/, so a new experiment or group option is covered without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import DictConfig, ListConfig, OmegaConf

from contracts import compose_config
from mtlrun.build import build_components
from mtlrun.config import config_dir, config_groups
from mtlrun.instantiate import instantiate_node
from mtlrun.task_selection import task_configs
from mtlrun.validation import validate_train
from mtlrun.data.loading import train_loader

CONFIGS = Path(config_dir())
# Tiny data so building every combination stays fast; given last, so they win over experiments.
TINY = ["data.n_train=16", "data.n_val=8", "data.n_test=8", "data.batch_size=4", "data.eval_batch_size=4"]
TINY_KEYS = {o.split("=")[0] for o in TINY}


compose_train = compose_config




EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# presets of several groups at once: experiments here, hparams_search (sweeper presets) in test_hparams_search.py
GROUP_OPTIONS = [f"{group}={option}" for group, options in config_groups().items()
                 if group not in ("experiment", "hparams_search") for option in options]
# Options that only make sense with other data get it (given after the option, so the option is still
# what the assertions check). Datasets that read files from disk (and their task presets) are covered on
# fake on-disk copies in test_standard_datasets.py.
MULTIMODAL = ["data=digits_av", "tasks=digits_av"]
NEEDS = {"data=digits_av": ["tasks=digits_av"], "tasks=digits_av": ["data=digits_av"]}
NEEDS.update({o: MULTIMODAL for o in GROUP_OPTIONS
              if o.startswith(("fusion=", "backbone/text=", "backbone/audio=", "backbone/tabular="))})
NEEDS.update({"data=text_tagging": ["tasks=text_tagging"], "tasks=text_tagging": ["data=text_tagging"]})
NEEDS.update({"data=scenes": ["tasks=scenes", "backbone/image=segnet"],
              "tasks=scenes": ["data=scenes", "backbone/image=segnet"],
              "tasks=scenes_det": ["data=scenes", "backbone/image=segnet"]})
# the optional pretrained backbones: random weights (nothing is cached here), and skipped without their extra
NEEDS["backbone/text=hf"] = [*MULTIMODAL, "backbone.text.pretrained=false",
                             "backbone.text.config={model_type:bert,hidden_size:32,num_hidden_layers:1,"
                             "num_attention_heads:2,intermediate_size:64}"]
EXTRA_MODULE = {"backbone/image=timm": "timm", "backbone/image=timm_dense": "timm", "backbone/text=hf": "transformers"}
ON_DISK = ("data=cifar10", "data=celeba", "data=nyuv2", "data=table", "data=conll", "data=coco",
           "tasks=cifar10", "tasks=celeba", "tasks=nyuv2")
# data=mixture has no data.n_train (each source has its own) and no single dataset: tests/data/test_mixture.py
# runs it and its experiment through the same checks
OWN_TESTS = ("data=mixture", "experiment=mixture_")
CASES = [[]] + [[f"experiment={e}"] for e in EXPERIMENTS if not f"experiment={e}".startswith(OWN_TESTS)] + \
    [[o, *NEEDS.get(o, [])] for o in GROUP_OPTIONS if not o.startswith((*ON_DISK, *OWN_TESTS))]


def test_globs_found_the_shipped_configs():
    assert {"smoke", "multidigits_resnet18"} <= set(EXPERIMENTS)
    for option in ("backbone/image=cnn", "backbone/image=resnet18", "backbone/image=resnet34",
                   "backbone/image=resnet50", "fusion=concat", "fusion=late", "backbone/text=gru", "data=digits_av",
                   "optim=adam", "optim=adamw", "optim=sgd", "scheduler=constant", "scheduler=cosine",
                   "scheduler=multistep", "data=multidigits", "arch=hps", "tasks=multidigits",
                   "weighting=static", "trainer=default"):
        assert option in GROUP_OPTIONS


def test_no_shipped_config_sets_hydra_mode():
    """tests/hydra_memo.py answers Hydra's get_mode without composing ("not set"): right only while no config
    sets hydra.mode, which the real get_mode (kept as ORIGINAL_GET_MODE) confirms for each command's config."""
    import yaml
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from hydra_memo import ORIGINAL_GET_MODE

    hydra = Hydra.create_main_hydra2("mtlrun", create_config_search_path(str(CONFIGS)))
    try:
        for name in ("train", "eval", "predict", "export", "affinity"):
            assert ORIGINAL_GET_MODE(hydra, name, ["experiment=smoke"] if name == "train" else []) is None, name
    finally:
        GlobalHydra.instance().clear()
    for path in CONFIGS.rglob("*.yaml"):
        text = yaml.safe_load(path.read_text()) or {}
        assert "mode" not in (text.get("hydra") or {}), path  # an experiment (@package _global_) could set it


def _nodes(node):
    yield node
    if isinstance(node, (DictConfig, ListConfig)) and not (node._is_none() or node._is_missing()):
        for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
            yield from _nodes(node._get_node(key))


def _composed_twice_and_as_shipped(config_dir_: Path, config_name: str, overrides: list[str]) -> list[tuple]:
    """What compose() gives, hydra node included: with tests/hydra_memo.py's kept files and compositions (a first
    time, then from what was kept after another composition has used the same files) and with Hydra as it ships."""
    from hydra import compose, initialize_config_dir

    import hydra_memo

    def composed(overrides):
        with initialize_config_dir(config_dir=str(config_dir_), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        assert all(node._get_root() is cfg for node in _nodes(cfg))  # no node of a kept file, or of another config
        flags = [(key, node._get_node_flag("struct"), node._get_node_flag("readonly"),
                  node._get_node_flag("no_deepcopy_set_nodes"), OmegaConf.get_type(node))
                 for key, node in [("", cfg), *((k, cfg._get_node(k)) for k in cfg)]]
        return OmegaConf.to_yaml(cfg), flags

    first = composed(overrides)
    composed([*overrides, "+unrelated=1"])  # the same files again, not the same composition
    again = composed(overrides)
    with hydra_memo.as_shipped():
        shipped = composed(overrides)
    return [first, again, shipped]


@pytest.mark.parametrize("overrides", [[], ["experiment=multidigits_hard", "seed=3"],
                                       ["arch=mtan", "weighting=upgrad", "weighting.grad_on=representation"],
                                       ["data=digits_av", "tasks=digits_av", "fusion=film", "logger=[csv,tensorboard]"]],
                         ids=["default", "experiment", "groups-and-values", "multimodal"])
def test_the_tests_compositions_are_hydras(overrides):
    first, again, shipped = _composed_twice_and_as_shipped(CONFIGS, "train", overrides)
    assert first == shipped and again == shipped


def test_the_tests_compositions_that_part_ways_are_hydras(monkeypatch):
    # Where a composition parts from an earlier one, the merge of the defaults they share is kept (tests/hydra_memo.py):
    # the second parts from the first at arch (which keeps the merge up to arch), the third starts from that merge
    # and parts from the second at weighting, the fourth starts from it too and parts from the first at weighting
    import hydra_memo

    monkeypatch.setattr(hydra_memo, "_composed", {})
    monkeypatch.setattr(hydra_memo, "_prefixes", {})
    loads = []
    load = ConfigLoaderImpl._load_single_config
    monkeypatch.setattr(ConfigLoaderImpl, "_load_single_config", lambda *a, **k: loads.append(1) or load(*a, **k))
    counts = []
    for overrides in (["arch=mmoe", "weighting=uw"], ["arch=ple", "weighting=uw"], ["arch=ple", "weighting=famo"],
                      ["arch=mmoe", "weighting=famo", "optim=sgd"]):
        before = len(loads)
        first, again, shipped = _composed_twice_and_as_shipped(CONFIGS, "train", overrides)
        assert first == shipped and again == shipped, overrides
        counts.append(len(loads) - before)
    assert len(hydra_memo._prefixes) == 3
    # the first two merge every default (kept, then as shipped); the last two only those after arch, then all
    everything = counts[0] // 2
    assert counts[1] == counts[0] and all(everything < count < counts[0] for count in counts[2:]), counts


def test_the_tests_compositions_resolve_an_interpolated_default_as_hydra_does(tmp_path):
    # Hydra builds the choices an interpolated default reads at each node of the defaults tree; the tests build it
    # when one is read (tests/hydra_memo.py)
    for group, options in {"dataset": ["imagenet", "cifar"], "model": ["alexnet"],
                           "pair": ["imagenet_alexnet", "cifar_alexnet"]}.items():
        (tmp_path / group).mkdir()
        for option in options:
            (tmp_path / group / f"{option}.yaml").write_text(f"name: {option}\n")
    (tmp_path / "main.yaml").write_text("defaults:\n  - dataset: imagenet\n  - model: alexnet\n"
                                        "  - pair: ${dataset}_${model}\n  - _self_\n")
    for overrides in ([], ["dataset=cifar"]):
        first, again, shipped = _composed_twice_and_as_shipped(tmp_path, "main", overrides)
        assert first == shipped and again == shipped
        assert f"name: {(overrides or ['=imagenet'])[0].split('=')[1]}_alexnet" in shipped[0]


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _assert_group_is(cfg: DictConfig, group: str, option: str, overridden: frozenset = frozenset()):
    """cfg[group] is the option's file (apart from the tiny data overrides and the keys in `overridden`)."""
    expected = OmegaConf.to_container(OmegaConf.load(CONFIGS / group / f"{option}.yaml"))
    expected.pop("defaults", None)
    for key, value in _leaves(expected):
        full = f"{group.replace('/', '.')}.{key}"  # group backbone/image lives at backbone.image
        if full not in TINY_KEYS | overridden:
            assert OmegaConf.select(cfg, full) == value, full


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: o[0] if o else "default")
def test_config_composes_builds_and_runs_one_step(overrides):
    if overrides and overrides[0] in EXTRA_MODULE:
        pytest.importorskip(EXTRA_MODULE[overrides[0]])
    cfg = compose_train([*overrides, *TINY])

    # the composition picked what was asked for
    for override in overrides[:1]:  # the option under test; the others are the data it needs
        group, option = override.split("=")
        if group == "experiment":
            experiment = OmegaConf.to_container(OmegaConf.load(CONFIGS / "experiment" / f"{option}.yaml"))
            defaults = experiment.pop("defaults", [])
            own = frozenset(key for key, _ in _leaves(experiment))  # the experiment's values win, checked below
            for entry in defaults:
                for key, choice in entry.items():
                    _assert_group_is(cfg, key.removeprefix("override ").strip("/"), choice, own)
            for key, value in _leaves(experiment):
                if key not in TINY_KEYS and not key.startswith("hydra."):  # compose() drops the hydra node
                    assert OmegaConf.select(cfg, key) == value, key
        else:  # apart from the keys the needed overrides set
            _assert_group_is(cfg, group, option, frozenset(o.split("=")[0] for o in overrides[1:] if "." in o))
    assert cfg.data.n_train == 16 and cfg.data.batch_size == 4
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    validate_train(cfg)
    parts = build_components(cfg)
    spec = parts.data.spec
    assert set(parts.tasks) == set(task_configs(cfg, spec.targets))
    for name, task in parts.tasks.items():
        assert task.name == name
        assert task.check(spec.targets[name]) == []

    train = parts.data.dataset("train")
    assert len(train) == 16
    batch = next(iter(train_loader(train, batch_size=cfg.data.batch_size, seed=cfg.seed, epoch=0)))
    assert set(batch["inputs"]) == set(spec.modalities)
    for modality, info in spec.modalities.items():
        assert batch["inputs"][modality].shape == (4, *info.shape)

    model = parts.model
    torch.manual_seed(0)
    preds = model(batch["inputs"])
    assert set(preds) == set(parts.tasks)
    for name, task in parts.tasks.items():
        info = spec.targets[name]
        if task.dense:  # a map at the image's resolution
            assert preds[name].shape == (4, task.output_dim, *spec.modalities["image"].shape[-2:])
        elif task.token_level:  # one prediction per token of the text
            assert preds[name].shape == (4, *spec.modalities["text"].shape, task.output_dim)
        elif info.kind == "detection":  # a grid of the task's stride: class logits, 4 distances, centre-ness
            h, w = spec.modalities["image"].shape[-2:]
            assert preds[name].shape == (4, info.num_classes + 5, h // task.stride, w // task.stride)
        else:
            assert preds[name].shape == (4, task.output_dim)
        expected_dim = {"classification": info.num_classes, "segmentation": info.num_classes,
                        "tagging": info.num_classes, "detection": (info.num_classes or 0) + 5}.get(info.kind, info.dim)
        assert task.output_dim == expected_dim

    # one optimizer step through the configured weighting, optimizer and scheduler
    optimizer = instantiate_node(cfg.optim, "optim")(list(model.parameters()) + list(parts.weighting.parameters()))
    scheduler = instantiate_node(cfg.scheduler, "scheduler")(optimizer, total_steps=10)
    masks = batch.get("label_mask", {})  # partial labels (e.g. experiment=multidigits_hard): unlabelled rows out
    losses = {t: parts.tasks[t].loss(preds[t], batch["targets"][t], masks.get(t)) for t in parts.tasks}
    objective = parts.weighting.backward(losses, scale=lambda loss: loss)
    assert torch.isfinite(objective)
    if cfg.weighting._target_.endswith("StaticWeighting"):  # the others' objectives are their own
        expected = sum(cfg.tasks[t].weight * losses[t].detach() for t in parts.tasks)
        torch.testing.assert_close(objective, expected)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    scheduler.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > 0
    assert optimizer.param_groups[0]["lr"] > 0


def test_tiny_overrides_win_over_an_experiment():
    cfg = compose_train(["experiment=smoke", *TINY])
    assert cfg.data.n_train == 16 and cfg.data.eval_batch_size == 4
    assert cfg.trainer.max_epochs == 1  # the experiment's own value
