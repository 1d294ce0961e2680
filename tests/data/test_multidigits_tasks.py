"""multidigits' optional tasks (sum, parity), partial labels (data.label_fraction) and tasks.only."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from contracts import compose_config, TINY, read_csv, read_results, run_cli
from mtlrun.build import build_components, build_tasks
from mtlrun.config import config_dir
from mtlrun.task_selection import task_configs
from mtlrun.validation import validate_train
from mtlrun.data.base import TargetInfo
from mtlrun.data.multidigits import MultiDigits
from mtlrun.engine.records import read_metrics_csv
from mtlrun.errors import ConfigError, UsageError

SMALL = {"n_train": 200, "n_val": 40, "n_test": 40}


def compose_train(*overrides: str):
    return compose_config([*overrides, "data.n_train=16", "data.n_val=8", "data.n_test=8", "data.batch_size=4"])


def targets(data: MultiDigits, split: str) -> dict[str, torch.Tensor]:
    return data.dataset(split).tensors["targets"]


# ------------------------------------------------------------------------------------ sum and parity
def test_sum_and_parity_are_computed_from_the_two_digits():
    data = MultiDigits(**SMALL)
    for split in ("train", "val", "test"):
        t = targets(data, split)
        left, right = t["left"], t["right"]
        assert t["sum"].dtype == torch.float32 and t["sum"].shape == (len(left), 1)
        assert torch.equal(t["sum"].squeeze(1), (left + right).float())  # raw 0..18, not rescaled
        assert t["parity"].dtype == torch.float32 and t["parity"].shape == (len(left),)
        assert torch.equal(t["parity"], (left % 2 == 1).float())  # 1 = the left digit is odd
    train = targets(data, "train")
    assert 0 <= train["sum"].min() and train["sum"].max() <= 18 and len(train["sum"].unique()) > 10
    assert set(train["parity"].tolist()) == {0.0, 1.0}


def test_spec_declares_every_target_and_the_presets_build_against_it():
    spec = MultiDigits(**SMALL).spec
    assert spec.targets["sum"] == TargetInfo("regression", dim=1)
    assert spec.targets["parity"] == TargetInfo("binary", dim=1)
    assert spec.targets["left"] == spec.targets["right"] == TargetInfo("classification", num_classes=10)

    assert list(task_configs(compose_train(), None)) == ["left", "right"]  # the default task set is unchanged
    for preset, names in (("multidigits_sum", ["left", "right", "sum"]),
                          ("multidigits_parity", ["left", "right", "parity"]),
                          ("multidigits_all", ["left", "right", "sum", "parity"])):
        cfg = compose_train(f"tasks={preset}")
        assert cfg.tasks.only is None
        tasks = build_tasks(cfg, spec)
        assert list(tasks) == names
    assert (tasks["sum"].kind, tasks["sum"].output_dim, tasks["parity"].kind) == ("regression", 1, "binary")


# ------------------------------------------------------------------------------------ partial labels
def test_label_fraction_masks_exact_fraction_and_hides_the_other_labels():
    full = MultiDigits(**SMALL)
    part = MultiDigits(**SMALL, label_fraction={"right": 0.25, "sum": 0.5, "left": 1.0})
    train = part.dataset("train")
    masks = train.tensors["label_mask"]
    assert set(masks) == {"right", "sum"}  # a fraction of 1 needs no mask
    assert masks["right"].dtype == torch.bool and masks["right"].shape == (200,)
    assert int(masks["right"].sum()) == 50 and int(masks["sum"].sum()) == 100

    t, f = train.tensors["targets"], full.dataset("train").tensors["targets"]
    assert torch.equal(t["right"][masks["right"]], f["right"][masks["right"]])  # labelled: the true label
    assert (t["right"][~masks["right"]] == -1).all()  # unlabelled: a placeholder nothing may train on
    assert torch.isnan(t["sum"][~masks["sum"]]).all()
    assert torch.equal(t["sum"][masks["sum"]], f["sum"][masks["sum"]])
    assert torch.equal(t["left"], f["left"]) and torch.equal(t["parity"], f["parity"])

    # val and test stay fully labelled by default
    for split in ("val", "test"):
        assert "label_mask" not in part.dataset(split).tensors
        assert torch.equal(targets(part, split)["right"], targets(full, split)["right"])
    # a batch carries the masks
    batch = train.__getitems__([0, 1, 2, 3])
    assert set(batch["label_mask"]) == {"right", "sum"} and batch["label_mask"]["right"].shape == (4,)


def test_label_fraction_is_deterministic_independent_and_nested():
    def mask(seed=0, **fractions):
        return MultiDigits(**SMALL, seed=seed, label_fraction=fractions).dataset("train").tensors["label_mask"]

    assert torch.equal(mask(right=0.3)["right"], mask(right=0.3)["right"])
    assert not torch.equal(mask(right=0.3)["right"], mask(seed=1, right=0.3)["right"])
    assert torch.equal(mask(right=0.3)["right"], mask(right=0.3, left=0.2, parity=0.7)["right"])
    small, large = mask(right=0.1)["right"], mask(right=0.5)["right"]
    assert (small & ~large).sum() == 0 and small.sum() == 20 and large.sum() == 100
    assert mask(right=0.0)["right"].sum() == 0


def test_label_fraction_splits_and_validation():
    data = MultiDigits(**SMALL, label_fraction={"left": 0.5}, label_fraction_splits=["train", "val"])
    assert int(data.dataset("val").tensors["label_mask"]["left"].sum()) == 20
    assert "label_mask" not in data.dataset("test").tensors

    with pytest.raises(ConfigError) as err:
        MultiDigits(**SMALL, label_fraction={"up": 0.5, "left": 1.5}, label_fraction_splits=["dev"])
    text = str(err.value)
    assert "data.label_fraction.up: multidigits has no target 'up'; available: left, right, sum, parity" in text
    assert "data.label_fraction.left=1.5: must be a number in [0, 1]" in text
    assert "'dev' is not a split" in text

    cfg = compose_train("data.label_fraction.parity=0.25", "tasks=multidigits_parity")
    parts = build_components(cfg)
    assert int(parts.data.dataset("train").tensors["label_mask"]["parity"].sum()) == 4  # 0.25 x 16


# ----------------------------------------------------------------------------------------- tasks.only
def test_every_tasks_preset_declares_only():
    presets = sorted(p.stem for p in (config_dir() / "tasks").glob("*.yaml"))
    assert {"multidigits", "multidigits_sum", "multidigits_parity", "multidigits_all"} <= set(presets)
    for preset in presets:  # `tasks.only=...` needs no `+` with every preset
        declared = compose_train(f"tasks={preset}").tasks
        assert "only" in declared and declared.only is None, preset
        names = [k for k in declared if k not in ("only", "from_data")]
        if names:  # from_data declares none: its tasks come from the data
            cfg = compose_train(f"tasks={preset}", f"tasks.only=[{names[-1]}]")
            assert list(task_configs(cfg, None)) == [names[-1]], preset


def test_tasks_only_selects_tasks_everywhere():
    cfg = compose_train("tasks.only=[left]")
    validate_train(cfg)
    assert list(task_configs(cfg, None)) == ["left"]
    parts = build_components(cfg)
    assert list(parts.tasks) == ["left"]
    assert set(parts.model(parts.data.dataset("train").__getitems__([0, 1])["inputs"])) == {"left"}

    cfg = compose_train("tasks=multidigits_all", "tasks.only=[parity,sum]")
    assert list(task_configs(cfg, None)) == ["sum", "parity"]  # in the preset's order
    assert list(task_configs(compose_train("tasks.only=right"), None)) == ["right"]  # one name needs no brackets


def test_tasks_only_unknown_or_empty_is_a_usage_error_listing_the_tasks():
    cfg = compose_train("tasks.only=[left,up]")
    with pytest.raises(UsageError, match=r"tasks.only=\[left,up\]: unknown task\(s\) up; valid tasks: left, right"):
        task_configs(cfg, None)
    with pytest.raises(ConfigError, match="unknown task"):
        validate_train(cfg)
    with pytest.raises(ConfigError, match=r"tasks.only=\[\]: selects no task; valid tasks: left, right"):
        validate_train(compose_train("tasks.only=[]"))


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_train_all_four_tasks_end_to_end(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "tasks=multidigits_all", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_results(run)
    for key in ("left/accuracy", "right/macro_f1", "sum/mae", "sum/rmse", "parity/accuracy", "parity/f1"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    assert 0.0 <= metrics["test/parity/accuracy"] <= 1.0
    assert metrics["test/sum/mae"] < 18  # a prediction in digit units, not a NaN or a blow-up


@pytest.mark.e2e
def test_train_with_partial_labels_end_to_end(tmp_path):
    # right: a quarter of the training labels; sum: none at all, so every batch has no sum label and its
    # loss is exactly 0 (no NaN), which is no measurement: its train cells are empty, not 0; sum is
    # auxiliary: trained and reported, not monitored
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "tasks=multidigits_sum", "data.label_fraction.right=0.25",
                   "data.label_fraction.sum=0.0", "tasks.sum.auxiliary=true", f"hydra.run.dir={run}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sum (aux)" in proc.stdout
    train_rows = [r for r in read_metrics_csv(run / "metrics.csv") if r["split"] == "train"]
    assert train_rows and all("sum/loss" not in r for r in train_rows)  # read_metrics_csv skips empty cells
    assert all(r["sum/loss"] == "" for r in read_csv(run / "metrics.csv") if r["split"] == "train")  # the column stays
    assert all(math.isfinite(r["right/loss"]) and r["right/loss"] > 0 for r in train_rows)
    metrics = read_results(run)
    assert all(math.isfinite(v) for v in metrics.values())  # val/test are fully labelled
    assert "test/sum/mae" in metrics
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.data.label_fraction.right == 0.25 and saved.tasks.sum.auxiliary is True


def test_new_targets_and_label_noise_are_exact_and_seeded():
    import torch

    from mtlrun.data.multidigits import MultiDigits

    clean = MultiDigits(n_train=2000, n_val=50, n_test=50).build()
    noisy_dm = MultiDigits(n_train=2000, n_val=50, n_test=50, label_noise={"right": 0.4, "parity": 0.25})
    noisy = noisy_dm.build()
    t, n = clean["train"].tensors["targets"], noisy["train"].tensors["targets"]
    assert torch.equal(t["larger"], (t["left"] > t["right"]).float())
    assert torch.equal(t["zero"], (t["left"] == 0).float()) and 0.05 < t["zero"].mean() < 0.15
    changed = n["right"] != t["right"]
    assert int(changed.sum()) == 800  # exactly 40% of 2000, always to a different class
    assert n["right"].min() >= 0 and n["right"].max() <= 9
    assert int((n["parity"] != t["parity"]).sum()) == 500 and set(n["parity"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(n["left"], t["left"])  # other tasks untouched
    assert torch.equal(noisy["val"].tensors["targets"]["right"], clean["val"].tensors["targets"]["right"])
    again = MultiDigits(n_train=2000, n_val=50, n_test=50, label_noise={"right": 0.4, "parity": 0.25}).build()
    assert torch.equal(again["train"].tensors["targets"]["right"], n["right"])  # a pure function of the seed


def test_label_noise_on_a_regression_target_or_out_of_range_is_refused():
    import pytest

    from mtlrun.data.multidigits import MultiDigits
    from mtlrun.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        MultiDigits(label_noise={"sum": 0.1, "left": 1.5}, label_noise_splits=["dev"])
    text = str(exc.value)
    assert "data.label_noise.sum: label noise applies to a class or binary target" in text
    assert "data.label_noise.left=1.5: must be a number in [0, 1]" in text
    assert "data.label_noise_splits: 'dev' is not a split" in text
