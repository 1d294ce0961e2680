"""Sharing architectures (`arch=`): built from the real configs on the cnn and ResNet-18 backbones.

For each: output shapes, the shared / task parameter partition, the factorization the representation-level
gradient methods rely on (a task's gradient on the shared parameters is its gradient on `shared`,
backpropagated through `shared`), one optimizer step, and a state-dict round trip; then what is specific
to each method, and each architecture trained end to end by one tiny CLI sweep (`mtlrun train -m arch=...`).
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from contracts import as_list, check_gradient_factorizes, check_parameter_partition, losses_of, run_cli
from mtlrun.build import build_components
from mtlrun.config import config_dir
from mtlrun.data.loading import train_loader
from mtlrun.errors import UsageError
from mtlrun.models.backbone.image import SmallCNN
from mtlrun.models.arch import MMoE, MTAN, PLE, CrossStitch, SoftParameterSharing
from mtlrun.tasks import Classification

TINY = ["data.n_train=8", "data.n_val=4", "data.n_test=4", "data.batch_size=4", "data.eval_batch_size=4"]

# (arch, backbone, arch options): every arch's shipped defaults on both backbones, other options on the cnn
CASES = [
    *[(arch, backbone, ()) for backbone in ("cnn", "resnet18")
      for arch in ("hps", "soft", "cross_stitch", "mtan", "mmoe", "ple")],
    ("cross_stitch", "cnn", ("arch.per_channel=true",)),
    ("mtan", "cnn", ("arch.reduction=1",)),
    ("mmoe", "cnn", ("arch.shared_stages=0",)),
    ("mmoe", "cnn", ("arch.shared_stages=3", "arch.num_experts=2")),
    ("ple", "cnn", ("arch.num_levels=2",)),
    ("ple", "cnn", ("arch.num_levels=3", "arch.shared_stages=0", "arch.num_task_experts=2",
                    "arch.num_shared_experts=2")),
    ("ple", "resnet18", ("arch.num_levels=2",)),
]
IDS = ["-".join([arch, backbone, *(o.split(".", 1)[1] for o in opts)]) for arch, backbone, opts in CASES]
# the optional timm backbone (pip install "mtlrun[timm]") keeps the same contract with every arch
_NO_TIMM = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason='needs pip install "mtlrun[timm]"')
for _arch in ("hps", "soft", "cross_stitch", "mtan", "mmoe", "ple"):
    CASES.append(pytest.param((_arch, "timm", ("backbone.image.name=resnet18",)), marks=_NO_TIMM))
    IDS.append(f"{_arch}-timm")




def build(overrides, seed=0):
    """(model, tasks, batch) from the real `train` config, as `mtlrun train <overrides>` would build them."""
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *TINY])
    torch.manual_seed(seed)
    parts = build_components(cfg)
    batch = next(iter(train_loader(parts.data.dataset("train"), batch_size=4, seed=0, epoch=0)))
    return parts.model, parts.tasks, batch


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def built(request):
    """Built once per case and shared by the tests that do not change the weights. Module scope makes
    pytest run all tests of one case together, so only one case's models are alive at a time."""
    arch, backbone, options = request.param
    return build([f"arch={arch}", f"backbone/image={backbone}", *options])


# --------------------------------------------------------------------------------------- every arch


def test_forward_shapes_and_shared_representation(built):
    model, tasks, batch = built
    model.eval()
    with torch.no_grad():
        preds, shared = model(batch["inputs"], return_shared=True)
        plain = model(batch["inputs"])
    assert set(preds) == set(tasks) == {"left", "right"}
    for t in tasks:
        assert preds[t].shape == (4, 10)
        torch.testing.assert_close(plain[t], preds[t], rtol=0, atol=0)
    if type(model).has_shared_representation:
        assert shared is not None
        assert all(s.shape[0] == 4 for s in as_list(shared))
    else:
        assert shared is None


def test_shared_and_task_parameters_partition_all_parameters(built):
    check_parameter_partition(*built)


def test_task_gradient_factorizes_through_shared_representation(built):
    check_gradient_factorizes(*built)


def test_one_optimizer_step_reduces_the_loss_on_a_fixed_batch(built):
    model, tasks, batch = built
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)

    def objective():
        total = sum(losses_of(model(batch["inputs"]), tasks, batch).values())
        regularizer = model.regularizer()
        return total if regularizer is None else total + regularizer

    before = objective()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = objective()
    assert after < before.detach()


def test_state_dict_round_trip(built):
    model, tasks, batch = built
    arch_cls = type(model)
    other = copy.deepcopy(model)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    with torch.no_grad():
        a, b = model(batch["inputs"]), other(batch["inputs"])
    for t in tasks:
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)
    assert arch_cls is type(other)


# ---------------------------------------------------------------------------------------------- soft


def test_soft_regularizer_is_lambda_times_mean_pairwise_squared_distance():
    tasks = {name: Classification(num_classes=3) for name in ("a", "b", "c")}
    model = SoftParameterSharing(make_encoder=lambda: SmallCNN(1, (8, 8), channels=(4, 8), out_dim=6),
                                 tasks=tasks, modality="image", lambda_=0.3)
    encoders = [list(model.encoders[t].parameters()) for t in tasks]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = 0.3 * sum(sum((p - q).pow(2).sum() for p, q in zip(encoders[i], encoders[j]))
                         for i, j in pairs) / len(pairs)
    torch.testing.assert_close(model.regularizer(), expected)
    for t in ("b", "c"):
        model.encoders[t].load_state_dict(model.encoders["a"].state_dict())
    assert model.regularizer().item() == 0
    model.lambda_ = 0.0
    assert model.regularizer() is None  # no penalty: nothing added to the objective, nothing logged


def test_soft_built_from_config_regularizes_and_shares_nothing():
    model, tasks, batch = build(["arch=soft", "arch.lambda_=0.5"])
    assert model.lambda_ == 0.5
    left, right = (list(model.encoders[t].parameters()) for t in ("left", "right"))
    expected = 0.5 * sum((p - q).pow(2).sum() for p, q in zip(left, right))
    torch.testing.assert_close(model.regularizer(), expected)
    assert model.regularizer() > 0
    model.encoders["right"].load_state_dict(model.encoders["left"].state_dict())
    assert model.regularizer().item() == 0
    assert type(model).has_shared_representation is False
    assert list(model.shared_parameters()) == []


# -------------------------------------------------------------------------------------- cross-stitch


def test_cross_stitch_units_start_near_identity():
    model, _, _ = build(["arch=cross_stitch"])
    assert len(model.units) == 2  # between the cnn's 3 stages
    expected = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    for unit in model.units:
        torch.testing.assert_close(unit.alpha.detach().squeeze(-1), expected)
    per_channel, _, _ = build(["arch=cross_stitch", "arch.per_channel=true"])
    assert [u.alpha.shape for u in per_channel.units] == [(2, 2, 32), (2, 2, 64)]


@pytest.mark.parametrize("per_channel", [False, True])
def test_cross_stitch_at_identity_is_independent_networks(per_channel):
    model, tasks, batch = build(["arch=cross_stitch", "arch.self_weight=1.0", f"arch.per_channel={per_channel}"])
    model.eval()
    x = batch["inputs"]["image"]
    with torch.no_grad():
        preds = model(batch["inputs"])
        for t in tasks:
            torch.testing.assert_close(preds[t], model.heads[t](model.encoders[t](x)))


def test_cross_stitch_mixes_streams():
    tasks = {"a": Classification(num_classes=3), "b": Classification(num_classes=3)}
    model = CrossStitch(make_encoder=lambda: SmallCNN(1, (8, 8), channels=(4, 8), out_dim=6), tasks=tasks,
                        modality="image", self_weight=0.5).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        _, streams = model({"image": x}, return_shared=True)
        a, b = (model.encoders[t].stages[0](x) for t in tasks)
        torch.testing.assert_close(streams[0], 0.5 * a + 0.5 * b)
        torch.testing.assert_close(streams[1], streams[0])


def test_cross_stitch_needs_two_stages():
    with pytest.raises(UsageError, match="arch=cross_stitch needs a backbone with at least 2 stages"):
        build(["arch=cross_stitch", "backbone.image.channels=[8]"])


# ---------------------------------------------------------------------------------------------- mtan


def test_mtan_with_open_masks_is_the_shared_encoder():
    """Masks of 1 everywhere: each task reads the plain shared encoder through its own projection."""
    model, tasks, batch = build(["arch=mtan"])
    for attention in model.attention.values():
        for mask in attention.masks:
            bn = mask[-2]
            torch.nn.init.zeros_(bn.weight)
            torch.nn.init.constant_(bn.bias, 50.0)  # sigmoid(50) == 1 in float32
    model.eval()
    x = batch["inputs"]["image"]
    with torch.no_grad():
        preds, shared = model(batch["inputs"], return_shared=True)
        features = x
        for stage, f in zip(model.stages, shared):
            features = stage(features)
            torch.testing.assert_close(f, features)
        for t in tasks:
            torch.testing.assert_close(preds[t], model.heads[t](model.projects[t](features)))


# ------------------------------------------------------------------------------------------ mmoe, ple


def _copy_experts(experts):
    for expert in experts[1:]:
        expert.load_state_dict(experts[0].state_dict())


def test_mmoe_gates_make_convex_combinations():
    model, tasks, batch = build(["arch=mmoe"])
    _copy_experts(model.experts)  # identical experts: any convex combination is the expert itself
    model.eval()
    with torch.no_grad():
        preds, (experts, pooled) = model(batch["inputs"], return_shared=True)
        assert experts.shape == (4, 3, 256) and pooled.shape == (4, 32)
        expected = model.experts[0](model.bottom(batch["inputs"]["image"]))
        for t in tasks:
            weights = model.gates[t](pooled)
            torch.testing.assert_close(weights.sum(-1), torch.ones(4))
            assert (weights > 0).all()
            torch.testing.assert_close(preds[t], model.heads[t](expected))


@pytest.mark.parametrize("levels", [1, 2])
def test_ple_with_identical_experts_is_one_expert_chain(levels):
    model, tasks, batch = build(["arch=ple", f"arch.num_levels={levels}", "arch.num_task_experts=2"])
    assert len(model.levels) == levels
    for level in model.levels:
        _copy_experts([*level.shared_experts, *(e for es in level.task_experts.values() for e in es)])
    model.eval()
    with torch.no_grad():
        preds = model(batch["inputs"])
        x = model.bottom(batch["inputs"]["image"])
        for level in model.levels:
            x = level.shared_experts[0](x)
        for t in tasks:
            torch.testing.assert_close(preds[t], model.heads[t](x))


def test_ple_levels_split_the_stages_after_the_bottom():
    model, _, _ = build(["arch=ple", "backbone/image=resnet18", "arch.num_levels=3"])
    # resnet18: stem | layer1 .. layer4; stem shared, levels get [layer1, layer2], [layer3], [layer4 + pool]
    assert len(model.bottom) == 1
    assert [len(level.shared_experts[0]) for level in model.levels] == [2, 1, 2]
    assert [level.shared_gate is None for level in model.levels] == [False, False, True]
    assert model.levels[0].task_gates["left"].linear.in_features == 64
    assert model.levels[0].shared_gate.linear.out_features == 2 + 1  # two tasks' experts + one shared


@pytest.mark.parametrize("overrides,message", [
    (["arch=ple", "arch.num_levels=3"], r"arch.num_levels=3: a level needs at least one encoder stage"),
    (["arch=mmoe", "arch.shared_stages=4"], r"arch.shared_stages=4: must be an integer in \[0, 3\]"),
    (["arch=mmoe", "arch.num_experts=0"], r"arch.num_experts=0: must be an integer >= 1"),
    (["arch=mtan", "arch.reduction=0"], r"arch.reduction=0: must be an integer >= 1"),
])
def test_bad_arch_options_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        build(overrides)


class _FlatEncoder(torch.nn.Module):
    """A user encoder without the stage API: enough for hps and soft, not for the stage-wise archs."""

    out_dim = 5

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("arch", [CrossStitch, MTAN, MMoE, PLE])
def test_stage_wise_archs_name_the_missing_stage_api(arch):
    with pytest.raises(UsageError, match=r"works stage by stage, but the backbone _FlatEncoder has no stages"):
        arch(make_encoder=_FlatEncoder, tasks={"a": Classification(num_classes=3)}, modality="image")


def test_soft_works_with_any_encoder():
    model = SoftParameterSharing(make_encoder=_FlatEncoder, tasks={"a": Classification(num_classes=3),
                                                                  "b": Classification(num_classes=2)},
                                 modality="image")
    preds = model({"image": torch.rand(2, 1, 8, 8)})
    assert preds["a"].shape == (2, 3) and preds["b"].shape == (2, 2)


def test_mmoe_with_projection_experts():
    tasks = {"a": Classification(num_classes=3)}
    model = MMoE(make_encoder=lambda: SmallCNN(1, (8, 8), channels=(4, 8), out_dim=6), tasks=tasks,
                 modality="image", num_experts=2, shared_stages=2)
    assert len(model.bottom) == 2 and all(len(e) == 1 for e in model.experts)
    assert model({"image": torch.rand(3, 1, 8, 8)})["a"].shape == (3, 3)


# ----------------------------------------------------------------------------------------- end to end

E2E_ARCHS = ["soft", "cross_stitch", "mtan", "mmoe", "ple"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """One tiny `mtlrun train -m arch=...` sweep: every arch through the real CLI, one process start-up."""
    root = tmp_path_factory.mktemp("archs")
    proc = run_cli("train", "-m", "experiment=smoke", f"arch={','.join(E2E_ARCHS)}", "data.n_train=128",
                   "data.n_val=64", "data.n_test=64", "data.batch_size=32", "data.eval_batch_size=64",
                   "trainer.device=cpu", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    targets = {OmegaConf.load(Path(config_dir()) / "arch" / f"{a}.yaml")._target_: a for a in E2E_ARCHS}
    runs = {}
    for run in (root / "sweep").iterdir():
        if run.is_dir():
            runs[targets[OmegaConf.load(run / "config.yaml").arch._target_]] = run
    return runs


@pytest.mark.e2e
@pytest.mark.parametrize("arch", E2E_ARCHS)
def test_train_end_to_end(sweep, arch):
    run = sweep[arch]
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert 0 <= metrics["test/left/accuracy"] <= 1
    with (run / "metrics.csv").open() as f:
        train_rows = [row for row in csv.DictReader(f) if row["split"] == "train"]
    assert train_rows
    if arch == "soft":
        assert float(train_rows[0]["regularizer"]) > 0
    else:
        assert not train_rows[0].get("regularizer")
    state = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model, _, _ = build([f"arch={arch}"])
    model.load_state_dict(state["model"])  # the checkpoint rebuilds from the config
