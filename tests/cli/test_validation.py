"""Every bad value is a usage error before any work: exit 2, no traceback, every problem listed at once.

The trainer section against its typed schema (mtlrun/schema.py), the optim / scheduler / data values, every
`_target_` node's keys against its target's signature (validation.check_targets), in train and in eval; and the
thread policy (trainer.threads, mtlrun/engine/threads.py).
"""

from __future__ import annotations

import logging
import os
import re

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from contracts import TINY, compose_config, run_cli
from mtlrun import schema
from mtlrun.config import config_dir
from mtlrun.validation import check_targets, validate_eval, validate_train
from mtlrun.engine.threads import apply_threads, thread_policy
from mtlrun.engine.trainer_config import TrainerConfig
from mtlrun.errors import ConfigError

EVAL_EDITABLE = ("data.batch_size", "data.eval_batch_size", "data.num_workers", "trainer.device",
                 "trainer.precision", "trainer.limit_eval_batches", "trainer.threads")


def problems_of(overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_train(compose_config(overrides))
    return info.value.problems


def assert_usage_error(proc, run_dir, fragments):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, out)
    assert not (run_dir / "results.json").exists()


# ------------------------------------------------------------------------------------ the real CLI

TRAIN_BAD = {  # override -> what the message must say (the key=value and what is valid)
    "optim.lr=-1": "optim.lr=-1: must be a finite number > 0",
    "optim.weight_decay=-1": "optim.weight_decay=-1: must be a finite number >= 0",
    "data.n_train=0": "data.n_train=0: must be an integer >= 1",
    "trainer.early_stopping.min_delta=abc": "trainer.early_stopping.min_delta=abc: must be a finite number >= 0",
    "trainer.compile=maybe": "trainer.compile=maybe: must be true or false",
    "scheduler.warmup_steps=-5": "scheduler.warmup_steps=-5: must be an integer >= 0",
    "+optim.lrr=1": "optim.lrr: torch.optim.AdamW takes no argument 'lrr'; valid: lr, betas,",
    "+trainer.maxepochs=3": "trainer.maxepochs: unknown key; did you mean trainer.max_epochs?",
    "trainer.threads=0": "trainer.threads=0: must be null (auto) or an integer >= 1",
}


@pytest.mark.e2e
def test_train_lists_every_bad_value_at_once(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, *TRAIN_BAD, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_usage_error(proc, run, [f"invalid config ({len(TRAIN_BAD)} problem(s))", *TRAIN_BAD.values()])
    assert not (run / "checkpoints").exists()  # refused before the first step


@pytest.mark.e2e
@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "optim.lr=abc: must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr=nan: must be a finite number > 0"),
], ids=["abc", "nan"])
def test_train_learning_rate_must_be_a_finite_positive_number(tmp_path, override, message):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, override, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_usage_error(proc, run, ["invalid config (1 problem(s))", message])


@pytest.mark.e2e
def test_eval_validates_its_overrides_like_train(tmp_path, trained_run):
    run = tmp_path / "ev"
    proc = run_cli("eval", f"checkpoint={trained_run / 'checkpoints' / 'best.pt'}", "trainer.limit_eval_batches=-1",
                   "data.batch_size=0", "trainer.precision=8", "trainer.threads=abc", f"hydra.run.dir={run}",
                   cwd=tmp_path)
    assert_usage_error(proc, run, [
        "invalid config (4 problem(s))",
        "trainer.limit_eval_batches=-1: must be null (all), an int >= 1 (batches) or a float in (0, 1] (fraction)",
        "data.batch_size=0: must be an integer >= 1",
        "trainer.precision=8: valid: 32, bf16, 16",
        "trainer.threads=abc: must be null (auto) or an integer >= 1"])
    assert not (run / "metrics.csv").exists()


@pytest.mark.e2e
def test_eval_threads_and_train_threads_are_logged(tmp_path, trained_run):
    run = tmp_path / "ev"
    proc = run_cli("eval", f"checkpoint={trained_run / 'checkpoints' / 'best.pt'}", "trainer.threads=1",
                   "trainer.limit_eval_batches=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "threads: 1 (trainer.threads)" in (run / "eval.log").read_text()
    assert (run / "results.json").is_file()
    # the train run of the fixture chose its threads too (OMP_NUM_THREADS when the tests run with it set)
    assert re.search(r"threads: \d+ \((OMP_NUM_THREADS=\d+|auto: \d+ cores / 1 local process)\)",
                     (trained_run / "train.log").read_text())


@pytest.mark.e2e
def test_train_threads_one_is_applied_and_logged(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "trainer.threads=1", "data.n_train=64", "data.n_val=32", "data.n_test=32",
                   "trainer.limit_eval_batches=1", f"hydra.run.dir={run}", cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "threads: 1 (trainer.threads)" in (run / "train.log").read_text()
    assert OmegaConf.load(run / "config.yaml").trainer.threads == 1


# ------------------------------------------------------------------------------ the schema, in-process


def test_schema_declares_every_key_of_the_default_trainer_yaml():
    with open(config_dir() / "trainer" / "default.yaml") as f:
        assert yaml.safe_load(f) == schema.defaults(TrainerConfig)
    for f in schema.schema_fields(TrainerConfig).values():
        assert f.metadata["doc"], f.name


def test_default_config_and_every_bad_trainer_value():
    validate_train(compose_config())
    validate_train(compose_config(["trainer.threads=4", "trainer.precision=16", "trainer.device=cuda:1",
                                   "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.01",
                                   "trainer.compile=true", "trainer.limit_train_batches=0.5"]))
    bad = {"trainer.compile=maybe": "must be true or false", "trainer.progress_bar=1": "must be true or false",
           "trainer.accumulate=0": "must be an integer >= 1", "trainer.max_epochs=2.5": "must be an integer >= 1",
           "trainer.early_stopping.min_delta=nan": "must be a finite number >= 0",
           "trainer.early_stopping.patience=0": "must be null (off) or an integer >= 1",
           "trainer.grad_clip=inf": "must be null (off) or a finite number > 0",
           "trainer.monitor_mode=up": "valid: auto, max, min", "trainer.precision=8": "valid: 32, bf16, 16",
           "trainer.threads=-2": "must be null (auto) or an integer >= 1",
           "trainer.limit_eval_batches=-1": "(0, 1] (fraction)"}
    problems = problems_of(list(bad))
    assert len(problems) == len(bad), problems
    for override, valid in bad.items():
        assert sum(p.startswith(f"{override}:") and valid in p for p in problems) == 1, (override, problems)


def test_unknown_trainer_keys_say_what_was_meant():
    problems = sorted(problems_of(["+trainer.maxepochs=3", "+trainer.early_stopping.patiense=2", "+trainer.zzz=1"]))
    assert problems[0] == "trainer.early_stopping.patiense: unknown key; did you mean trainer.early_stopping.patience?"
    assert problems[1] == "trainer.maxepochs: unknown key; did you mean trainer.max_epochs?"
    assert problems[2].startswith("trainer.zzz: unknown key; valid: max_epochs, device, precision,")
    assert "threads" in problems[2]


def test_a_checkpoint_config_gets_the_keys_it_lacks_and_keeps_unknown_ones_with_a_warning(caplog):
    """A checkpoint written before trainer.threads existed, or by a version with a key this one dropped."""
    cfg = compose_config()
    raw = OmegaConf.to_container(cfg)
    del raw["trainer"]["threads"], raw["trainer"]["early_stopping"]["min_delta"]
    raw["trainer"]["retired_key"] = 1
    old = OmegaConf.create(raw)
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        validate_train(old, from_checkpoint=True)
    assert old.trainer.threads is None and old.trainer.early_stopping.min_delta == 0.0
    assert "trainer.retired_key: unknown key" in caplog.text
    with pytest.raises(ConfigError, match="trainer.retired_key: unknown key"):
        validate_train(OmegaConf.create(raw))  # a fresh config: refused


def test_eval_refuses_what_it_may_change_and_warns_about_what_it_cannot(caplog):
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config()))
    cfg.trainer.compile = "maybe"  # an older mtlrun accepted it; eval cannot override trainer.compile
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        validate_eval(cfg, EVAL_EDITABLE)
    assert "the checkpoint's config: trainer.compile=maybe: must be true or false" in caplog.text
    cfg.trainer.limit_eval_batches = -1
    with pytest.raises(ConfigError) as info:
        validate_eval(cfg, EVAL_EDITABLE)
    assert [p.split(":")[0] for p in info.value.problems] == ["trainer.limit_eval_batches=-1"]


def test_data_sizes_and_batch_sizes():
    problems = problems_of(["data.n_train=0", "data.n_val=-1", "data.n_test=abc", "data.batch_size=0",
                            "data.eval_batch_size=0", "data.num_workers=-1"])
    assert [p.split(":")[0] for p in problems] == ["data.n_train=0", "data.n_val=-1", "data.n_test=abc",
                                                   "data.batch_size=0", "data.eval_batch_size=0",
                                                   "data.num_workers=-1"]
    validate_train(compose_config(["data.eval_batch_size=null"]))


def test_a_non_finite_number_anywhere_in_the_config_is_a_problem():
    # NaN compares False with every bound (`weight < 0`), so the sections' own checks let it through
    problems = problems_of(["tasks.left.weight=nan", "arch.head_dropout=-inf", "backbone.image.out_dim=inf",
                            "optim.lr=nan", "+arch.extra=[nan]"])
    why = "must be a finite number (NaN and infinity are not valid values of any option)"
    assert sorted(problems) == sorted([
        f"arch.extra: mtlrun.models.arch.hps.HardParameterSharing takes no argument 'extra'; valid: "
        f"head_hidden, head_dropout",  # its value is not listed a second time
        "optim.lr=nan: must be a finite number > 0",  # the section's own line, not a second one
        f"arch.head_dropout=-inf: {why}", f"backbone.image.out_dim=inf: {why}", f"tasks.left.weight=nan: {why}"])


def test_optim_and_scheduler_values():
    problems = problems_of(["optim=sgd", "optim.lr=0", "optim.momentum=-0.5", "optim.weight_decay=inf",
                            "optim.nesterov=yes", "scheduler=multistep", "scheduler.milestones=[0.5,2]",
                            "scheduler.gamma=0", "scheduler.warmup_steps=1.5"])
    assert problems == [
        "optim.lr=0: must be a finite number > 0",
        "optim.momentum=-0.5: must be a finite number >= 0",
        "optim.nesterov=yes: must be true or false",
        "optim.weight_decay=inf: must be a finite number >= 0",
        "scheduler.warmup_steps=1.5: must be an integer >= 0",
        "scheduler.milestones=[0.5, 2]: must be a list of fractions of training in [0, 1], e.g. [0.5,0.75]",
        "scheduler.gamma=0: must be a finite number > 0",
    ]
    problems = problems_of(["optim=adam", "+optim.betas=[0.9,1.5]", "+optim.eps=-1"])
    assert problems == ["optim.betas=[0.9, 1.5]: must be two numbers in [0, 1), e.g. [0.9,0.999]",
                        "optim.eps=-1: must be a finite number >= 0"]
    # numbers the schema does not name: finite and >= 0 (an optimizer's hyperparameters), numeric if the
    # target's default is a number
    problems = problems_of(["optim._target_=torch.optim.Adagrad", "~optim.weight_decay", "+optim.lr_decay=-1",
                            "+optim.initial_accumulator_value=abc"])
    assert problems == ["optim.lr_decay=-1: must be a finite number >= 0",
                        "optim.initial_accumulator_value=abc: must be a finite number >= 0"]


@pytest.mark.parametrize("overrides, problem", [
    (["optim=sgd", "optim.momentum=0"],  # sgd.yaml has nesterov: true
     "optim: Nesterov momentum requires a momentum and zero dampening (optim.momentum=0, optim.nesterov=true)"),
    (["optim=adam", "+optim.fused=true", "+optim.foreach=true"],
     "optim: `fused` and `foreach` cannot be `True` together. (optim.fused=true, optim.foreach=true)"),
    (["scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "~scheduler.warmup_steps", "~scheduler.min_lr_ratio",
      "+scheduler.max_lr=0.1", "+scheduler.pct_start=2"],
     "scheduler: Expected float between 0 and 1 pct_start, but got 2 (scheduler.pct_start=2)"),
], ids=["sgd-nesterov", "adam-fused-foreach", "onecycle"])
def test_values_an_optimizer_or_scheduler_refuses_together_are_config_problems(overrides, problem):
    # each value passes its own check; the constructor refuses the combination (built on a stand-in parameter)
    assert problems_of(overrides) == [problem]


def test_a_partial_targets_constructor_error_at_build_time_is_a_config_error():
    from omegaconf import OmegaConf

    from mtlrun.instantiate import call_node

    def muon_like(params, lr):  # checks the real parameters' shapes, which a stand-in cannot show
        raise ValueError("only 2D parameters are supported")

    node = OmegaConf.create({"_target_": "x.Muon", "_partial_": True, "lr": 0.1})
    with pytest.raises(ConfigError) as info:
        call_node(lambda params: muon_like(params, lr=0.1), "optim", node, [torch.zeros(3)])
    assert info.value.problems == ["optim: only 2D parameters are supported (optim.lr=0.1)"]


# ---------------------------------------------------------------------- `_target_` keys vs signatures


def test_keys_a_target_does_not_take_are_reported_for_every_node():
    problems = problems_of(["+optim.lrr=1", "+scheduler.warmup=3", "+data.n_trian=5", "+backbone.image.chanels=8",
                            "+fusion.dimm=3", "+arch.head_hiden=4", "+tasks.left.wieght=2", "+weighting.foo=1"])
    assert problems == [
        "data.n_trian: mtlrun.data.multidigits.MultiDigits takes no argument 'n_trian'; valid: n_train, n_val, "
        "n_test, source_split, seed, label_fraction, label_fraction_splits, label_noise, label_noise_splits, "
        "batch_size, eval_batch_size, "
        "num_workers, pin_memory, drop_last, modalities, modality_dropout, transforms, persistent_workers; did you "
        "mean n_train?",
        "backbone.image.chanels: mtlrun.models.backbone.image.SmallCNN takes no argument 'chanels'; valid: "
        "in_channels, input_size, channels, out_dim, dropout; did you mean channels?",
        "fusion.dimm: mtlrun.models.fusion.concat.Concat takes no argument 'dimm'; valid: dim, trunk; did you mean "
        "dim?",
        "arch.head_hiden: mtlrun.models.arch.hps.HardParameterSharing takes no argument 'head_hiden'; valid: "
        "head_hidden, head_dropout; did you mean head_hidden?",
        "tasks.left.wieght: mtlrun.tasks.Classification takes no argument 'wieght'; valid: num_classes, "
        "label_smoothing, weight, auxiliary; did you mean weight?",
        "weighting.foo: mtlrun.weighting.static.StaticWeighting takes no argument 'foo'; valid: grad_on",
        "optim.lrr: torch.optim.AdamW takes no argument 'lrr'; valid: lr, betas, eps, weight_decay, amsgrad, "
        "maximize, foreach, capturable, differentiable, fused; did you mean lr?",
        "scheduler.warmup: mtlrun.engine.schedulers.cosine takes no argument 'warmup'; valid: warmup_steps, "
        "min_lr_ratio; did you mean warmup_steps?",
    ]


def test_the_keys_validation_leaves_out_are_what_the_builder_passes(tmp_path, monkeypatch):
    """build.SUPPLIED, the keys check_targets does not call valid, is what a build hands each target itself:
    recorded on a single-modality run (arch, optim, and the scheduler the Trainer calls) and on an early and a
    late fusion (fusion's two sets of arguments), by name as the target's signature binds them."""
    import functools
    import inspect

    from mtlrun import build
    from mtlrun.instantiate import locate

    passed: dict[str, set] = {}
    real = build.instantiate_node

    def recording(node, key, **kwargs):
        built = real(node, key, **kwargs)
        if key not in build.SUPPLIED:
            return built
        passed.setdefault(key, set()).update(kwargs)
        if not isinstance(built, functools.partial):
            return built
        signature = inspect.signature(locate(str(node._target_)))

        def call(*args, **more):
            passed[key].update(signature.bind_partial(*args, **more).arguments)
            return built(*args, **more)

        return call

    monkeypatch.setattr(build, "instantiate_node", recording)
    build.build_trainer(compose_config([*TINY, "logger=[]"]), tmp_path)
    multimodal = ["data=digits_av", "tasks=digits_av", "data.n_train=16", "data.n_val=8", "data.n_test=8",
                  "data.modalities=[image,tabular]", "backbone.image.channels=[4]", "backbone.image.out_dim=8",
                  "backbone.tabular.hidden=[8]", "backbone.tabular.out_dim=8"]
    build.build_components(compose_config([*multimodal, "fusion=concat", "fusion.dim=8", "fusion.trunk=[8]"]))
    build.build_components(compose_config([*multimodal, "fusion=late"]))
    assert passed == {key: set(names) for key, names in build.SUPPLIED.items()}


def test_a_target_is_located_one_way(tmp_path, monkeypatch):
    """instantiate.locate, which validation, the trust check, the builder and inference share: a name that is
    not there, and a module that is there but fails to import, are each one TargetNotFound with a one-line
    reason (`broken` tells them apart: validation leaves a broken module to the build)."""
    from mtlrun.instantiate import TargetNotFound, locate

    (tmp_path / "fails_on_import.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert locate("torch.optim.SGD") is torch.optim.SGD
    with pytest.raises(TargetNotFound) as missing:
        locate("torch.optim.Nope")
    assert (str(missing.value), missing.value.broken) == ("'torch.optim' has no 'Nope'", False)
    with pytest.raises(TargetNotFound) as broken:
        locate("fails_on_import.Thing")
    assert (str(broken.value), broken.value.broken) == ("fails_on_import fails to import (RuntimeError: broken)", True)


def test_targets_of_user_code(tmp_path, monkeypatch):
    cfg = compose_config()
    cfg.weighting = {"_target_": "logging.basicConfig", "anything": 1}  # takes **kwargs: any key
    cfg.fusion = {"_target_": "textwrap.TextWrapper", "widht": 3}  # takes no **kwargs
    assert check_targets(cfg) == ["fusion.widht: textwrap.TextWrapper takes no argument 'widht'; valid: width, "
                                  "initial_indent, subsequent_indent, expand_tabs, replace_whitespace, "
                                  "fix_sentence_endings, break_long_words, drop_whitespace, break_on_hyphens, "
                                  "tabsize, max_lines, placeholder; did you mean width?"]
    # a module that is there but fails to import (a package it needs is missing, a bug): left to build, which
    # reports it if it builds that node at all (an unused backbone is never built)
    (tmp_path / "needs_a_package.py").write_text("import a_package_that_is_not_installed\nclass Net: pass\n")
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg.fusion = {"_target_": "needs_a_package.Net"}
    cfg.weighting = {"_target_": "broken_module.Weighting"}
    cfg.arch = {"_target_": "mtlrun.nothing.Here"}
    cfg.optim._target_ = "torch.optim.Nope"
    assert check_targets(cfg) == [
        "arch._target_=mtlrun.nothing.Here: cannot import it ('mtlrun' has no 'nothing'); give the dotted path of "
        "a class or function, e.g. a `_target_` from mtlrun's configs",
        "optim._target_=torch.optim.Nope: cannot import it ('torch.optim' has no 'Nope'); give the dotted path of "
        "a class or function, e.g. a `_target_` from mtlrun's configs"]


# --------------------------------------------------------------------------------------- thread policy


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_cores


def test_auto_threads_share_the_usable_cores_among_local_processes(cores, monkeypatch):
    cores(8)
    assert thread_policy(None, env={}) == (8, "auto: 8 cores / 1 local process")
    assert thread_policy(None, env={"LOCAL_WORLD_SIZE": "2"}) == (4, "auto: 8 cores / 2 local processes")
    assert thread_policy(None, env={"LOCAL_WORLD_SIZE": "3"})[0] == 2
    assert thread_policy(None, env={"LOCAL_WORLD_SIZE": "16"})[0] == 1  # never 0
    assert thread_policy(None, env={"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}) == (3, "OMP_NUM_THREADS=3")
    assert thread_policy(None, env={"OMP_NUM_THREADS": "junk"})[0] == 8  # unusable: auto
    assert thread_policy(5, env={"OMP_NUM_THREADS": "3"}) == (5, "trainer.threads")
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows: all the cores
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert thread_policy(None, env={}) == (6, "auto: 6 cores / 1 local process")


def test_apply_threads_sets_torch_and_logs(caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="mtlrun"):
            assert apply_threads(2) == 2
        assert torch.get_num_threads() == 2
        assert "threads: 2 (trainer.threads)" in caplog.text
    finally:
        torch.set_num_threads(before)
