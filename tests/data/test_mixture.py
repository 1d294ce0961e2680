"""data=mixture: how sources become tasks, what a batch holds, how steps draw sources, evaluation per source."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from contracts import compose_config
from mtlrun.build import build_components
from mtlrun.data.mixture_sampling import draw_counts, draw_sources, source_probabilities
from mtlrun.errors import UsageError
from mtlrun.instantiate import instantiate_node

# two multidigits sources of unequal size (big: left/right, small: parity), a few batches each
MIX = ["data=mixture", "tasks=from_data", "trainer.device=cpu",
       "data.sources.big.n_train=96", "data.sources.big.n_val=24", "data.sources.big.n_test=24",
       "data.sources.big.batch_size=16", "data.sources.big.eval_batch_size=10",
       "data.sources.small.n_train=32", "data.sources.small.n_val=12", "data.sources.small.n_test=12",
       "data.sources.small.batch_size=16", "data.sources.small.eval_batch_size=10"]


def mixture(*overrides):
    return instantiate_node(compose_config([*MIX, *overrides]).data, "data", _recursive_=False)


CPU = torch.device("cpu")


def test_probabilities_follow_the_formulas():
    sizes = [900, 100]
    assert source_probabilities(sizes, "proportional") == pytest.approx([0.9, 0.1])
    assert source_probabilities(sizes, "uniform") == pytest.approx([0.5, 0.5])
    assert source_probabilities(sizes, "temperature", 2.0) == pytest.approx([30 / 40, 10 / 40])  # sqrt: 30, 10
    assert source_probabilities(sizes, "temperature", 1.0) == pytest.approx([0.9, 0.1])


def test_draws_are_a_pure_function_of_seed_and_epoch_and_match_the_probabilities():
    p = [0.7, 0.2, 0.1]
    a = draw_sources(p, seed=3, epoch=5, steps=20000)
    assert a == draw_sources(p, seed=3, epoch=5, steps=20000)
    assert a[:100] == draw_sources(p, seed=3, epoch=5, steps=100)  # a step's source does not depend on the length
    assert a != draw_sources(p, seed=3, epoch=6, steps=20000) and a != draw_sources(p, seed=4, epoch=5, steps=20000)
    counts = draw_counts(a, ["x", "y", "z"])
    for name, q in zip("xyz", p):  # 4.5 standard deviations
        assert abs(counts[name] / 20000 - q) < 4.5 * math.sqrt(q * (1 - q) / 20000)


def test_sources_bring_their_targets_as_tasks_and_batches_mask_the_others():
    data = mixture()
    assert list(data.spec.targets) == ["left", "right", "parity"]
    assert list(data.spec.modalities) == ["image"]
    batch = next(iter(mixture().eval_loader("val", device=CPU)))  # round robin: big first
    assert batch["source"] == "big" and set(batch["targets"]) == {"left", "right", "parity"}
    assert not batch["label_mask"]["parity"].any() and batch["targets"]["parity"].shape == (10,)
    assert "left" not in batch["label_mask"]  # the source's own tasks: labelled as the source says


def test_prefix_and_span_name_the_tasks():
    both = ["data.targets.big=[left,parity]", "data.targets.small=[parity]"]
    assert list(mixture(*both, "data.prefix=true").spec.targets) == ["big_left", "big_parity", "small_parity"]
    spanned = mixture(*both, "data.span=[parity]")
    assert list(spanned.spec.targets) == ["left", "parity"]
    batches = list(spanned.eval_loader("test", device=CPU))
    assert {b["source"] for b in batches} == {"big", "small"}
    assert all("parity" not in b["label_mask"] for b in batches)  # labelled in both sources


def test_evaluation_measures_each_task_on_its_own_source_only():
    parts = build_components(compose_config(MIX))
    labelled = {t: 0 for t in parts.tasks}
    for batch in parts.data.eval_loader("val", device=CPU):
        for t in parts.tasks:
            mask = batch["label_mask"].get(t)
            labelled[t] += len(batch["targets"][t]) if mask is None else int(mask.sum())
    assert labelled == {"left": 24, "right": 24, "parity": 12}
    sources = [b["source"] for b in parts.data.eval_loader("val", device=CPU)]
    assert sources == ["big", "small", "big", "small", "big"]  # round robin: a limit cuts every source


def _sources(data, **kw):
    return [b["source"] for b in data.train_loader(device=CPU, **kw)]


def test_one_source_per_step_is_the_same_on_every_rank_and_after_a_resume():
    data = mixture("data.sampling=uniform", "data.steps_per_epoch=12")
    whole = list(data.train_loader(epoch=1, seed=0, device=CPU))
    assert len(whole) == 12 and {b["source"] for b in whole} == {"big", "small"}
    tail = list(data.train_loader(epoch=1, seed=0, device=CPU, skip_batches=7))
    for a, b in zip(whole[7:], tail, strict=True):  # a resumed epoch reads what the whole one read
        assert a["source"] == b["source"] and torch.equal(a["inputs"]["image"], b["inputs"]["image"])
    ranks = [_sources(data, epoch=1, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0] == ranks[1] == [b["source"] for b in whole]
    assert _sources(data, epoch=2, seed=0) != ranks[0]


def test_sampling_all_reads_every_source_each_step_and_cycles_the_small_one():
    data = mixture("data.sampling=all")
    assert data.multi_forward and data.train_batches() == 6  # the big source's 96 / 16 batches
    steps = list(data.train_loader(epoch=0, seed=0, device=CPU))
    assert len(steps) == 6 and all(set(s["sources"]) == {"big", "small"} for s in steps)
    small = [s["sources"]["small"]["inputs"]["image"] for s in steps]
    assert not torch.equal(small[0], small[2])  # its 2 batches, reshuffled on the second pass
    assert steps[0]["label_mask"]["parity"].all() and len(steps[0]["label_mask"]["left"]) == 16
    resumed = list(data.train_loader(epoch=0, seed=0, device=CPU, skip_batches=3))
    assert torch.equal(resumed[0]["sources"]["small"]["inputs"]["image"], small[3])


def test_state_holds_each_source_and_refuses_a_damaged_one():
    data = mixture()
    assert data.state_dict() == {"big": {}, "small": {}}
    data.load_state_dict({"big": {}, "small": {}})
    cfg = compose_config(MIX).data
    assert data.state_problems({"nope": {}}, cfg) == ["holds a state for source 'nope', which the config does not have"]
    assert data.state_problems({"big": [1]}, cfg) == ["source 'big': holds list, not a mapping"]
    assert data.state_problems({"big": {"vocab": 1}}, cfg) == [
        "source big: holds ['vocab']; MultiDigits keeps no state"]
    with pytest.raises(UsageError, match="nope"):
        data.load_state_dict({"nope": {}})


@pytest.mark.parametrize("overrides, message", [
    (["data.sampling=often"], "data.sampling=often: unknown; valid: all, proportional, uniform, temperature"),
    (["data.sampling=temperature", "data.temperature=0"], "data.temperature=0: must be a number > 0"),
    (["data.targets.small=[]"], "data.sources.small: brings no target"),
    (["data.targets.small=[left]"], "task 'left' comes from sources big, small; set data.prefix=true"),
    (["data.targets.small=[nope]"], "data.targets.small: the source has no target nope; available: left"),
    (["data.span=[zero]"], "data.span: 'zero' is a target of 0 source(s)"),
    (["data.steps_per_epoch=0"], "data.steps_per_epoch=0: must be an integer >= 1"),
    (["data.source=tiny"], "data.source=tiny: not a source; valid: big, small"),
    (["data.source=[big]"], "data.source=['big']: not a source"),
    (["data.batch_size=two"], "data.batch_size=two: must be an integer >= 1, or null"),
    (["data.span=3"], "data.span=3: give a list of target names"),
    (["data.sources.big=5"], "data.sources.big: needs a data config with a `_target_`"),
    (["data.sources.big._target_=mtlrun.data.mixture.Mixture"], "data.sources.big: a mixture cannot be a source"),
])
def test_bad_mixtures_are_usage_errors_naming_the_key(overrides, message):
    with pytest.raises(UsageError) as err:
        mixture(*overrides)
    assert message in str(err.value)


def test_an_empty_source_split_is_a_usage_error():
    data = mixture()
    small = data.sources["small"].module
    split_of = small.dataset
    small.dataset = lambda split: split_of(split) if split != "val" else []  # e.g. a table without val rows
    with pytest.raises(UsageError, match="data.sources.small: its val split is empty"):
        data.train_batches()


def test_representation_level_methods_are_refused_across_sources():
    with pytest.raises(UsageError, match="weighting.grad_on=representation .* data.sampling=all"):
        build_components(compose_config([*MIX, "data.sampling=all", "weighting=mgda",
                                         "weighting.grad_on=representation"]))
    build_components(compose_config([*MIX, "data.sampling=all", "weighting=mgda"]))  # parameter level: fine
    build_components(compose_config([*MIX, "weighting=mgda", "weighting.grad_on=representation"]))  # one source


def test_a_source_is_added_from_a_data_config_option():
    data = mixture("+data@data.sources.more=multidigits", "data.sources.more.seed=2", "+data.targets.more=[sum]",
                   "data.sources.more.n_train=16", "data.sources.more.n_val=4", "data.sources.more.n_test=4")
    assert list(data.spec.targets) == ["left", "right", "parity", "sum"] and len(data.sources) == 3


def test_a_source_is_any_data_config_and_one_input_name_needs_one_kind_of_input():
    with pytest.raises(UsageError, match="data.sources.shapes: its input 'image'"):  # 3 channels next to 1
        mixture("+data@data.sources.shapes=scenes", "data.sources.shapes.n_train=8", "data.sources.shapes.n_val=4",
                "data.sources.shapes.n_test=4", "data.sources.shapes.image_size=16")


@pytest.mark.parametrize("overrides", [["data=mixture"], ["experiment=mixture_digits"]])
def test_shipped_mixture_configs_validate_build_and_train_one_step(overrides):
    """What tests/cli/test_configs.py checks of every other shipped config, on tiny sources."""
    from mtlrun.validation import validate_train

    tiny = [f"data.sources.{s}.{k}={n}" for s in ("big", "small") for k, n in
            (("n_train", 32), ("n_val", 8), ("n_test", 8), ("batch_size", 8), ("eval_batch_size", 8))]
    cfg = compose_config([*overrides, "tasks=from_data", *tiny])
    validate_train(cfg)
    parts = build_components(cfg)
    assert list(parts.tasks) == ["left", "right", "parity"]
    batch = next(iter(parts.data.train_loader(epoch=0, seed=0, device=CPU)))
    preds = parts.model(batch["inputs"])
    losses = {t: parts.tasks[t].loss(preds[t], batch["targets"][t], batch["label_mask"].get(t)) for t in parts.tasks}
    assert all(torch.isfinite(loss) for loss in losses.values())
    parts.weighting.backward(losses, scale=lambda loss: loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.model.parameters())



@pytest.fixture(scope="module")
def mixture_checkpoint(tmp_path_factory):
    """An untrained mixture model saved as a checkpoint (in-process, as tests/cli/test_crafted_checkpoints.py)."""
    import mtlrun
    from omegaconf import OmegaConf

    from mtlrun.engine import checkpoint

    cfg = compose_config(MIX)
    parts = build_components(cfg)
    state = {"mtlrun_version": mtlrun.__version__, "format": checkpoint.FORMAT,
             "config": OmegaConf.to_container(cfg, resolve=True), "model": parts.model.state_dict(),
             "data": parts.data.state_dict(), "epoch": 0, "global_step": 0}
    path = tmp_path_factory.mktemp("mixture") / "best.pt"
    checkpoint.save(path, state)
    return path, state


@pytest.mark.parametrize("data, expected", [
    ({"big": {}, "small": {}, "nope": {}}, "holds a state for source 'nope', which the config does not have"),
    ({"big": [1], "small": {}}, "source 'big': holds list, not a mapping"),
    ({"big": {"vocab": {"a": 1}}, "small": {}}, "source big: holds ['vocab']; MultiDigits keeps no state"),
])
def test_a_crafted_mixture_data_state_is_refused_before_anything_is_built(mixture_checkpoint, tmp_path, data,
                                                                         expected):
    import mtlrun

    path, state = mixture_checkpoint
    assert mtlrun.load(path).data.state_dict() == {"big": {}, "small": {}}
    torch.save({**state, "data": data}, tmp_path / "crafted.pt")
    with pytest.raises(UsageError) as info:
        mtlrun.load(tmp_path / "crafted.pt")
    assert str(info.value).startswith(f"checkpoint={tmp_path / 'crafted.pt'}: ") and expected in str(info.value)
    crafted = {**state, "config": {**state["config"], "data": {**state["config"]["data"], "sources": [1]}}}
    torch.save(crafted, tmp_path / "sources_a_list.pt")
    with pytest.raises(UsageError):
        mtlrun.load(tmp_path / "sources_a_list.pt")


def test_each_source_keeps_its_own_training_transforms():
    flip = "data.sources.big.transforms=[{_target_:torchvision.transforms.v2.RandomHorizontalFlip,p:1.0}]"
    data = mixture(flip, "data.sampling=all")
    transform = data.train_transform()
    step = next(iter(data.train_loader(epoch=0, seed=0, device=CPU)))
    big, small = step["sources"]["big"], step["sources"]["small"]
    flipped = transform(big)
    assert torch.equal(flipped["inputs"]["image"], big["inputs"]["image"].flip(-1))
    assert flipped["targets"].keys() == big["targets"].keys() and flipped["source"] == "big"
    assert torch.equal(flipped["targets"]["left"], big["targets"]["left"])
    assert transform(small) is small  # the small source has none
    assert mixture().train_transform() is None


def test_the_mixtures_loader_keys_set_every_source_and_are_checked_as_data_keys():
    from mtlrun.errors import ConfigError
    from mtlrun.validation import validate_train

    data = mixture("data.eval_batch_size=7", "data.batch_size=4")
    assert [s.module.eval_batch_size for s in data.sources.values()] == [7, 7]
    assert data.train_batches() == 96 // 4 + 32 // 4
    assert mixture().sources["big"].module.batch_size == 16  # null: the source's own
    with pytest.raises(ConfigError) as err:
        validate_train(compose_config([*MIX, "data.batch_size=0", "data.sources.small.n_val=0"]))
    assert "data.batch_size=0: must be an integer >= 1" in str(err.value)
    assert "data.sources.small.n_val=0: must be an integer >= 1" in str(err.value)


def _trainer(tmp_path, *overrides):
    from mtlrun.build import build_trainer
    from mtlrun.distributed import DistInfo

    cfg = compose_config([*MIX, "logger=[]", "trainer.progress_bar=false", *overrides])
    return build_trainer(cfg, tmp_path, dist=DistInfo())


def test_sampling_all_takes_each_tasks_loss_on_its_own_sources_batch(tmp_path):
    trainer = _trainer(tmp_path, "data.sampling=all", "+tasks.left.weight=0.5")
    batch = next(iter(trainer.data.train_loader(epoch=0, seed=0, device=CPU)))
    model, weights = trainer.model, {"left": 0.5, "right": 1.0, "parity": 1.0}
    losses, shared = trainer.compute_losses(batch)
    assert shared is None  # static weighting asks for none
    trainer.weighting.backward(losses, scale=lambda loss: loss)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for part in batch["sources"].values():  # by hand: each source through the model, its own tasks' losses
        preds = model(part["inputs"])
        sum(weights[t] * trainer.tasks[t].loss(preds[t], part["targets"][t], None) for t in part["tasks"]).backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("arch", ["hps", "mtan", "mmoe", "ple", "cross_stitch", "soft"])
@pytest.mark.parametrize("sampling", ["all", "temperature"])
def test_every_arch_trains_a_step_on_a_mixture(tmp_path, arch, sampling):
    trainer = _trainer(tmp_path, f"arch={arch}", f"data.sampling={sampling}", "weighting=upgrad")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step(list(itertools.islice(trainer.data.train_loader(epoch=0, seed=0, device=CPU), 2)))
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_epoch_row_counts_the_batches_read_of_each_source():
    data = mixture("data.sampling=uniform", "data.steps_per_epoch=12")
    read = [b["source"] for b in data.train_loader(epoch=3, seed=5, device=CPU)]
    assert data.epoch_row(3, 5, 12) == {"draws/big": read.count("big"), "draws/small": read.count("small")}
    assert data.epoch_row(3, 5, 4) == {"draws/big": read[:4].count("big"), "draws/small": read[:4].count("small")}
    assert mixture("data.sampling=all").epoch_row(0, 0, 6) == {"draws/big": 6, "draws/small": 6}
