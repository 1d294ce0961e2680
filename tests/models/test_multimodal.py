"""Multi-modal models on the built-in `digits_av` data (image, audio, text, tabular -> digit, parity, ink).

In-process, with tiny encoders: every fusion (configs/fusion/*.yaml, late included) trains on sets of 2, 3
and 4 modalities (every set and every fusion x modality count by default, the full grid with
`pytest --exhaustive`); a modality missing at eval time never contributes to any prediction; one
modality builds the arch on its encoder without a fusion; the stage-wise archs and a gradient method run on
fused input; training modality dropout (`drop_modalities`); the dataset itself. Then one CLI run whose
checkpoint carries the text vocabulary and re-evaluates to the same test metrics.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts import compose_config, read_results, run_cli
from mtlrun.build import build_components, build_model
from mtlrun.config import config_dir
from mtlrun.data.base import DataSpec, select_modalities
from mtlrun.data.digits_av import DigitsAV, image_statistics
from mtlrun.data.modality import drop_modalities
from mtlrun.data.multidigits import _source_pools
from mtlrun.errors import UsageError
from mtlrun.models.backbone.image import SmallCNN
from mtlrun.models.fusion.late import LateFusion
from mtlrun.models.multimodal import FusedEncoder

MODALITIES = ("image", "audio", "text", "tabular")  # the data's order
COMBOS = [c for k in (2, 3, 4) for c in itertools.combinations(MODALITIES, k)]
FUSIONS = sorted(p.stem for p in (Path(config_dir()) / "fusion").glob("*.yaml"))
TINY_DATA = ["data.n_train=32", "data.n_val=16", "data.n_test=16", "data.batch_size=8", "data.eval_batch_size=16"]
TINY_ENCODERS = ["backbone.image.channels=[8,16]", "backbone.image.out_dim=16", "backbone.audio.channels=[4,8]",
                 "backbone.audio.out_dim=16", "backbone.text.hidden=8", "backbone.text.embed_dim=8",
                 "backbone.text.out_dim=16", "backbone.tabular.hidden=[16]", "backbone.tabular.out_dim=16"]
BASE = ["data=digits_av", "tasks=digits_av", *TINY_DATA, *TINY_ENCODERS, "trainer.device=cpu",
        "trainer.progress_bar=false"]
B = 8


def fusion_overrides(fusion: str) -> list[str]:
    return [f"fusion={fusion}"] + ([] if fusion == "late" else ["fusion.dim=16", "fusion.trunk=[16]"])


@functools.lru_cache(maxsize=None)
def config(fusion: str = "concat", extra: tuple[str, ...] = ()):
    """The composed config (cached: composing costs more than building a tiny model)."""
    return compose_config([*BASE, *fusion_overrides(fusion), *extra])


@pytest.fixture(scope="module")
def parts():
    """Data and tasks built once for the module (the model is rebuilt per case on a subset of the spec)."""
    return build_components(config())


@pytest.fixture(scope="module")
def batches(parts):
    train = parts.data.dataset("train")
    return train.__getitems__(list(range(B))), train.__getitems__(list(range(B, 2 * B)))


def spec_of(parts, combo) -> DataSpec:
    full = parts.data.full_spec
    return DataSpec({m: full.modalities[m] for m in combo}, full.targets)


def batch_of(parts, combo, index: int = 0) -> dict:
    """Train samples [index*B, (index+1)*B) with only the inputs of `combo` (select_modalities)."""
    ds = select_modalities(parts.data.dataset("train"), list(combo))
    return ds.__getitems__(list(range(index * B, (index + 1) * B)))


def make_model(parts, combo, fusion: str, extra: tuple[str, ...] = (), seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config(fusion, extra), parts.tasks, spec_of(parts, combo))


def losses_of(tasks, preds, batch) -> dict[str, torch.Tensor]:
    return {t: tasks[t].loss(preds[t], batch["targets"][t], None) for t in tasks}


def train_steps(model, tasks, batch, masks=(None, None)) -> tuple[list[float], set[str]]:
    """One Adam step on `batch` per entry of `masks` (the modality mask of that step; sum of the task
    losses + the model's regulariser): the totals and the names of the parameters that moved."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    totals = []
    for mask in masks:
        preds = model(batch["inputs"], modality_mask=mask)
        assert set(preds) == set(tasks)
        total = sum(losses_of(tasks, preds, batch).values())
        reg = model.regularizer()
        if reg is not None:
            total = total + reg
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return totals, changed


def owns(name: str, modality: str) -> bool:
    """The parameter belongs to `modality`'s encoder (fused) or sub-model (late)."""
    return f"encoders.{modality}." in name or name.startswith(f"models.{modality}.")


def assert_trains(model, tasks, batch, modalities):
    """Two steps: all modalities present, then with training modality dropout (per-sample masks)."""
    torch.manual_seed(0)
    dropped = drop_modalities(batch, 0.5)["modality_mask"]
    assert not all(m.all() for m in dropped.values())
    totals, changed = train_steps(model, tasks, batch, masks=(None, dropped))
    assert all(math.isfinite(v) for v in totals), totals
    names = [n for n, _ in model.named_parameters()]
    assert len(changed) > len(names) // 2, f"only {len(changed)} of {len(names)} parameters moved"
    for m in modalities:  # every modality's encoder got a gradient
        assert any(owns(n, m) for n in changed), f"no parameter of the {m} encoder moved"
    for t in tasks:  # every task's head trained
        assert any(f"heads.{t}." in n for n in changed), f"head {t} did not move"


# ------------------------------------------------------------------------- every fusion x modality set

def training_grid() -> list:
    """pytest.params (fusion, combo) over every fusion and every set of 2, 3 and 4 modalities. The default run
    takes, per fusion, one pair and one triple (rotating, so every set trains at least once) and all four
    (every fusion meets every modality and every modality count); the rest is marked exhaustive."""
    by_size = {k: [c for c in COMBOS if len(c) == k] for k in (2, 3, 4)}
    params = []
    for i, fusion in enumerate(FUSIONS):
        chosen = {sets[i % len(sets)] for sets in by_size.values()}
        params += [pytest.param(fusion, combo, id=f"{fusion}-{'+'.join(combo)}",
                                marks=() if combo in chosen else pytest.mark.exhaustive) for combo in COMBOS]
    return params


def test_globs_found_fusions_and_combos():
    assert {"late", "concat", "attention", "film", "cross_attention", "tensor", "embrace"} <= set(FUSIONS)
    assert len(COMBOS) == 11
    default = [p.values for p in training_grid() if not p.marks]
    assert {(f, len(c)) for f, c in default} == {(f, k) for f in FUSIONS for k in (2, 3, 4)}
    assert {(f, m) for f, c in default for m in c} == {(f, m) for f in FUSIONS for m in MODALITIES}
    assert {c for _, c in default} == set(COMBOS)
    assert len(training_grid()) == len(FUSIONS) * len(COMBOS)


@pytest.mark.parametrize("fusion, combo", training_grid())
def test_every_fusion_and_modality_set_trains(parts, fusion, combo):
    model = make_model(parts, combo, fusion)
    if fusion == "late":
        assert isinstance(model, LateFusion) and list(model.models) == list(combo)
    else:
        assert isinstance(model.encoder, FusedEncoder) and list(model.encoder.encoders) == list(combo)
        assert model.modality is None
    assert_trains(model, parts.tasks, batch_of(parts, combo), combo)


# ------------------------------------------------------------------------- missing modality at eval

EVAL_SETS = [MODALITIES, ("image", "text")]


def other_values(parts, m: str, batch: dict, other: dict, seed: int) -> list[torch.Tensor]:
    """Replacements for modality m's input: other samples' input, and (float kinds) large random values
    / (text) random token ids."""
    x = batch["inputs"][m]
    out = [other["inputs"][m]]
    g = torch.Generator().manual_seed(seed)
    if x.is_floating_point():
        noisy = torch.randn(x.shape, generator=g) * 10
        if m == "tabular":  # keep the categorical codes valid (the last two columns)
            noisy[:, -2:] = x[:, -2:].flip(0)
        out.append(noisy)
    else:
        vocab = parts.data.spec.modalities[m].args["vocab_size"]
        out.append(torch.randint(2, vocab, x.shape, generator=g))
    return out


@pytest.mark.parametrize("modset", EVAL_SETS, ids=["4", "2"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_missing_modality_never_contributes_at_eval(parts, batches, fusion, modset):
    model = make_model(parts, modset, fusion).eval()
    batch = {"inputs": {m: batches[0]["inputs"][m] for m in modset}}
    other = {"inputs": {m: batches[1]["inputs"][m] for m in modset}}
    with torch.no_grad():
        full = model(batch["inputs"])
        for i, m in enumerate(modset):
            mask = {m: torch.zeros(B, dtype=torch.bool)}
            preds = model(batch["inputs"], modality_mask=mask)
            for t, p in preds.items():
                assert torch.isfinite(p).all(), (m, t)
            changed_when_present = False
            for j, value in enumerate(other_values(parts, m, batch, other, seed=i)):
                inputs = {**batch["inputs"], m: value}
                replaced = model(inputs, modality_mask=mask)
                for t in preds:
                    assert torch.equal(replaced[t], preds[t]), f"missing {m} changed {t} ({j})"
                present = model(inputs)  # control: the same replacement does reach the model when present
                changed_when_present |= any(not torch.equal(present[t], full[t]) for t in full)
            assert changed_when_present, f"replacing the present {m} input changed nothing"
            # a missing modality changes the predictions (it was contributing when present)
            assert any(not torch.equal(preds[t], full[t]) for t in full), m


@pytest.mark.parametrize("combine", ["mean", "learned"])
def test_late_fusion_combines_the_remaining_submodels(parts, batches, combine):
    model = make_model(parts, MODALITIES, "late", (f"fusion.combine={combine}",)).eval()
    assert model.combine == combine
    if combine == "learned":
        with torch.no_grad():
            for head in model.heads.values():
                head.logits.copy_(torch.randn(len(MODALITIES)))
    inputs = batches[0]["inputs"]
    with torch.no_grad():
        sub = {m: model.models[m](inputs) for m in MODALITIES}
        for m in MODALITIES:
            preds = model(inputs, modality_mask={m: torch.zeros(B, dtype=torch.bool)})
            rest = [n for n in MODALITIES if n != m]
            for t, head in model.heads.items():
                logits = torch.stack([head.logits[MODALITIES.index(n)] for n in rest])
                weights = torch.softmax(logits.float(), 0) if combine == "learned" else torch.full((3,), 1 / 3)
                expected = sum(w * sub[n][t] for w, n in zip(weights, rest))
                torch.testing.assert_close(preds[t], expected, rtol=1e-5, atol=1e-6)
        # per-sample masks: sample b without image and audio gets the mean of text and tabular
        mask = {"image": torch.arange(B) % 2 == 0, "audio": torch.arange(B) % 2 == 0}
        preds = model(inputs, modality_mask=mask)
        for t, head in model.heads.items():
            w_all = torch.softmax(head.logits.float(), 0) if combine == "learned" else torch.full((4,), 0.25)
            w_two = torch.softmax(head.logits[2:].float(), 0) if combine == "learned" else torch.full((2,), 0.5)
            all_four = sum(w * sub[n][t] for w, n in zip(w_all, MODALITIES))
            two = w_two[0] * sub["text"][t] + w_two[1] * sub["tabular"][t]
            torch.testing.assert_close(preds[t][0::2], all_four[0::2], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(preds[t][1::2], two[1::2], rtol=1e-5, atol=1e-6)


def test_late_fusion_two_modalities_one_missing_is_exactly_the_other(parts, batches):
    model = make_model(parts, ("image", "text"), "late").eval()
    inputs = {m: batches[0]["inputs"][m] for m in ("image", "text")}
    with torch.no_grad():
        preds = model(inputs, modality_mask={"image": torch.zeros(B, dtype=torch.bool)})
        text_only = model.models["text"](inputs)
    for t in preds:
        assert torch.equal(preds[t], text_only[t])


# ------------------------------------------------------------------------------- one modality, errors

@pytest.mark.parametrize("fusion", ["concat", "film"])  # film needs 2+ modalities: with one, no fusion is built
def test_single_modality_builds_the_arch_on_its_encoder(fusion):
    cfg = config(fusion, ("data.modalities=[image]",))
    torch.manual_seed(0)
    parts = build_components(cfg)
    assert list(parts.data.spec.modalities) == ["image"]
    model = parts.model
    assert model.modality == "image"
    assert isinstance(model.encoder, SmallCNN) and not isinstance(model.encoder, FusedEncoder)
    assert not any("fusion" in n for n, _ in model.named_parameters())
    batch = parts.data.dataset("train").__getitems__(list(range(B)))
    assert set(batch["inputs"]) == {"image"}
    totals, changed = train_steps(model, parts.tasks, batch)
    assert all(math.isfinite(v) for v in totals) and len(changed) == len(list(model.parameters()))


@pytest.mark.parametrize("value", ["[nope]", "[]", "[image,nope]", "[image,image]"])
def test_bad_modality_selection_is_a_usage_error(value):
    with pytest.raises(UsageError) as info:
        build_components(config("concat", (f"data.modalities={value}",)))
    message = str(info.value)
    assert "data.modalities" in message
    assert "image, audio, text, tabular" in message  # lists the available ones
    if "nope" in value:
        assert "'nope'" in message


# ----------------------------------------------------------------------- stage-wise archs, gradients

STAGE_ARCHS = ["mtan", "cross_stitch", "mmoe", "ple", "soft"]


@pytest.mark.parametrize("fusion", ["concat", "attention"])
@pytest.mark.parametrize("arch", STAGE_ARCHS)
def test_stagewise_archs_on_fused_input(parts, arch, fusion):
    model = make_model(parts, MODALITIES, fusion, (f"arch={arch}",))
    assert model.modality is None
    assert type(model).__module__ == f"mtlrun.models.arch.{arch}"
    assert_trains(model, parts.tasks, batch_of(parts, MODALITIES), MODALITIES)


def _as_list(shared):
    return [shared] if isinstance(shared, torch.Tensor) else list(shared)


@pytest.mark.parametrize("arch", ["hps", "mtan"])
def test_shared_representation_has_gradients(parts, arch):
    model = make_model(parts, MODALITIES, "attention", (f"arch={arch}",)).train()
    batch = batch_of(parts, MODALITIES)
    preds, shared = model(batch["inputs"], return_shared=True)
    shared = _as_list(shared)
    assert shared and all(s.shape[0] == B for s in shared)
    for t, loss in losses_of(parts.tasks, preds, batch).items():
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), t
        assert all(g is None or torch.isfinite(g).all() for g in grads), t


@pytest.mark.parametrize("arch", ["mmoe", "ple"])
def test_gates_on_raw_input_refused_with_several_modalities(parts, arch):
    with pytest.raises(UsageError, match="shared_stages"):
        make_model(parts, ("image", "text"), "concat", (f"arch={arch}", "arch.shared_stages=0"))


@pytest.mark.parametrize("grad_on", ["parameters", "representation"])
def test_gradient_method_on_a_multimodal_model(grad_on):
    cfg = config("concat", ("weighting=pcgrad", f"weighting.grad_on={grad_on}"))
    torch.manual_seed(0)
    parts = build_components(cfg)
    model, weighting = parts.model.train(), parts.weighting
    assert isinstance(model.encoder, FusedEncoder)
    batch = parts.data.dataset("train").__getitems__(list(range(B)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        if weighting.needs_shared:
            preds, shared = model(batch["inputs"], return_shared=True)
        else:
            preds, shared = model(batch["inputs"]), None
        objective = weighting.backward(losses_of(parts.tasks, preds, batch), scale=lambda x: x, shared=shared)
        assert torch.isfinite(objective)
        assert torch.isfinite(weighting.current_weights()).all()
        optimizer.step()
        optimizer.zero_grad()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert sum(moved) > len(moved) // 2
    for m in MODALITIES:
        assert any(not torch.equal(b, p) for b, (n, p) in zip(before, model.named_parameters()) if owns(n, m)), m


# ------------------------------------------------------------------ dense backbones and dense tasks


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_a_dense_image_backbone_feeds_a_feature_fusion_its_pooled_map(parts, fusion):
    """backbone/image=segnet outputs a map; a feature fusion reads its pooled vector (and its cells as tokens)."""
    base = [o for o in BASE if not o.startswith("backbone.image.")]  # the small CNN's options
    cfg = compose_config([*base, *fusion_overrides(fusion), "backbone/image=segnet", "backbone.image.channels=[8,16]"])
    torch.manual_seed(0)
    model = build_model(cfg, parts.tasks, spec_of(parts, ("image", "audio")))
    assert model.encoder.encoders["image"].dense
    preds = model(batch_of(parts, ("image", "audio"))["inputs"])
    assert {t: tuple(p.shape) for t, p in preds.items()} == {"digit": (B, 10), "parity": (B, 1), "ink": (B, 1)}
    assert_trains(model, parts.tasks, batch_of(parts, ("image", "audio")), ("image", "audio"))


RGBD = ["data=scenes", "tasks=scenes", "backbone/image=segnet", "backbone.image.channels=[8,16]",
        "data.depth_sensor=true", "data.n_train=8", "data.n_val=4", "data.n_test=4", "data.image_size=16"]


def test_rgbd_dense_tasks_with_a_feature_fusion_is_a_usage_error():
    with pytest.raises(UsageError, match=r"tasks\.segmentation: a dense task .*FusedEncoder outputs one vector.*"
                                         r"fusion=late .*data\.modalities=\[image\]"):
        build_components(compose_config([*RGBD, "fusion=concat"]))


def test_rgbd_late_fusion_averages_per_pixel_predictions_over_present_modalities():
    torch.manual_seed(0)
    rgbd = build_components(compose_config([*RGBD, "fusion=late"]))
    model = rgbd.model.eval()
    assert isinstance(model, LateFusion) and model.modalities == ["image", "depth"]
    batch = rgbd.data.dataset("train").__getitems__([0, 1, 2, 3])
    inputs = batch["inputs"]
    assert inputs["depth"].shape == (4, 1, 16, 16)
    with torch.no_grad():
        preds = model(inputs)
        per_modality = {m: model.models[m](inputs) for m in model.modalities}
        no_depth = model(inputs, modality_mask={"depth": torch.tensor([True, False, True, False])})
    assert {t: tuple(p.shape) for t, p in preds.items()} == {
        "segmentation": (4, 5, 16, 16), "depth": (4, 1, 16, 16), "normals": (4, 3, 16, 16)}
    for t in preds:
        torch.testing.assert_close(preds[t], (per_modality["image"][t] + per_modality["depth"][t]) / 2)
        torch.testing.assert_close(no_depth[t][1::2], per_modality["image"][t][1::2])  # depth missing: image only
        torch.testing.assert_close(no_depth[t][0::2], preds[t][0::2])


# ---------------------------------------------------------------------------------- drop_modalities

def _batch(n: int, names, mask=None) -> dict:
    batch = {"inputs": {m: torch.full((n, 2), float(i + 1)) for i, m in enumerate(names)},
             "targets": {"t": torch.zeros(n)}}
    if mask is not None:
        batch["modality_mask"] = mask
    return batch


def _kept(out, names) -> torch.Tensor:
    return torch.stack([out["modality_mask"][m] for m in names], 1)


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c", "d")])
def test_drop_never_drops_everything(names):
    torch.manual_seed(0)
    batch = _batch(20_000, names)
    kept = _kept(drop_modalities(batch, 0.9), names)
    assert kept.any(1).all()
    # with p = 0.9 most rows are rescued down to exactly one modality
    assert (kept.sum(1) == 1).float().mean() > 0.5
    assert batch["inputs"]["a"].eq(1).all() and "modality_mask" not in batch  # nothing changed in place


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c")])
def test_drop_rate_matches_p(names):
    p, n, m = 0.3, 20_000, len(names)
    torch.manual_seed(1)
    kept = _kept(drop_modalities(_batch(n, names), p), names)
    # each modality is dropped with probability p, except that a row that lost all of them (p^m) gets
    # one of its m modalities back: expected rate p - p^m / m
    expected = p - p ** m / m
    std = math.sqrt(expected * (1 - expected) / (n * m))
    rate = 1 - kept.float().mean().item()
    assert abs(rate - expected) < 5 * std, (rate, expected, std)
    for i in range(m):  # no modality is favoured
        per = 1 - kept[:, i].float().mean().item()
        assert abs(per - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (i, per)


def test_drop_respects_an_existing_mask():
    names = ("a", "b", "c")
    n = 6_000
    rows = torch.arange(n)
    given = {"a": rows % 3 != 0,          # a absent in a third of the rows
             "b": rows % 3 != 1,          # b absent in another third
             "c": rows % 5 != 0}
    given["a"][:10] = False  # rows 0..9: only some modalities, row 0 (mod 15) none at all
    given["b"][:10] = False
    given["c"][0] = False
    torch.manual_seed(2)
    out = drop_modalities(_batch(n, names, {k: v.clone() for k, v in given.items()}), 0.9)
    had = torch.stack([given[m] for m in names], 1)
    kept = _kept(out, names)
    assert not (kept & ~had).any(), "a modality absent before dropout came back"
    assert kept[had.any(1)].any(1).all(), "a row that had a modality lost all of them"
    assert not kept[0].any()  # nothing to rescue from
    # rows that had exactly one modality keep it
    single = had.sum(1) == 1
    assert single.any() and torch.equal(kept[single], had[single])


def test_drop_noop_cases():
    one = _batch(100, ("a",))
    assert drop_modalities(one, 0.9) is one
    two = _batch(100, ("a", "b"))
    assert drop_modalities(two, 0.0) is two


def test_drop_deterministic_under_manual_seed():
    names = ("a", "b", "c")
    torch.manual_seed(7)
    first = _kept(drop_modalities(_batch(500, names), 0.5), names)
    torch.manual_seed(7)
    second = _kept(drop_modalities(_batch(500, names), 0.5), names)
    torch.manual_seed(8)
    third = _kept(drop_modalities(_batch(500, names), 0.5), names)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


# ------------------------------------------------------------------------------------------- dataset

SIZES = {"n_train": 120, "n_val": 40, "n_test": 60}


@pytest.fixture(scope="module")
def digits():
    dm = DigitsAV(**SIZES, seed=0)
    return dm, dm.build()


def _tensors(splits) -> dict:
    return {(s, g, k): t for s, ds in splits.items() for g, group in ds.tensors.items() for k, t in group.items()}


def test_digits_av_is_a_pure_function_of_seed(digits):
    _, splits = digits
    same = _tensors(DigitsAV(**SIZES, seed=0).build())
    other = _tensors(DigitsAV(**SIZES, seed=1).build())
    ours = _tensors(splits)
    assert same.keys() == ours.keys() == other.keys()
    for key in ours:
        assert torch.equal(ours[key], same[key]), key
    for split in ("train", "val", "test"):
        for m in MODALITIES:
            assert not torch.equal(ours[(split, "inputs", m)], other[(split, "inputs", m)]), (split, m)


def test_digits_av_splits_use_disjoint_source_images(digits):
    from sklearn.datasets import load_digits

    dm, _ = digits
    source = load_digits()
    pools = _source_pools(source.target, dm.source_split, dm.seed)
    assert sum(map(len, pools)) == len(source.target)
    assert len(set(np.concatenate(pools))) == len(source.target)  # disjoint and complete

    def keys(stats):
        return {tuple(np.round(row, 9)) for row in stats}

    pool_keys = [keys(image_statistics(source.images[p] / 16.0)) for p in pools]
    raw = dm._generate()
    for i, split in enumerate(("train", "val", "test")):
        used = keys(raw[split]["stats"])  # the statistics of each sample's clean source image
        assert used <= pool_keys[i], split
        for j in range(3):
            if j != i:
                assert not used & pool_keys[j], (split, j)


def test_digits_av_spec(digits):
    dm, splits = digits
    spec = dm.spec
    assert list(spec.modalities) == list(MODALITIES)
    kinds = {m: info.kind for m, info in spec.modalities.items()}
    assert kinds == {"image": "image", "audio": "audio", "text": "text", "tabular": "tabular"}
    assert spec.shape("image") == (1, 8, 8) and spec.modalities["image"].args["in_channels"] == 1
    assert tuple(spec.modalities["image"].args["input_size"]) == (8, 8)
    assert spec.shape("audio") == (2048,) and spec.modalities["audio"].args["sample_rate"] == 8000
    text = spec.modalities["text"].args
    assert spec.shape("text") == (48,) and text["max_len"] == 48
    assert text["vocab_size"] == dm.tokenizer.vocab_size == len(dm.state_dict()["tokenizer"]["vocab"]) > 2
    tab = spec.modalities["tabular"].args
    assert spec.shape("tabular") == (10,) and tab["num_numeric"] == 8 and list(tab["cardinalities"]) == [4, 4]
    assert {t: i.kind for t, i in spec.targets.items()} == {"digit": "classification", "parity": "binary",
                                                            "ink": "regression"}
    for split, ds in splits.items():
        inputs = ds.tensors["inputs"]
        n = SIZES[f"n_{split}"]
        for m in MODALITIES:
            assert tuple(inputs[m].shape) == (n, *spec.shape(m)), (split, m)
        assert inputs["text"].dtype == torch.long
        assert 0 <= inputs["text"].min() and inputs["text"].max() < text["vocab_size"]
        assert (inputs["text"][:, 0] != 0).all()  # every text has tokens
        codes = inputs["tabular"][:, 8:]
        assert ((codes >= 1) & (codes <= 4) & (codes == codes.round())).all()
        assert torch.isfinite(inputs["audio"]).all() and inputs["audio"].abs().max() <= 1.0


def test_digits_av_state_dict_round_trip(digits):
    dm, splits = digits
    state = dm.state_dict()
    assert state["tokenizer"]["vocab"][:2] == ["<pad>", "<unk>"]
    assert all(isinstance(v, (str, int, bool, list)) for v in state["tokenizer"].values())  # weights_only
    # a module that would fit another vocabulary (two training texts) reads the checkpoint's instead
    fresh = DigitsAV(n_train=2, n_val=40, n_test=60, seed=0)
    control = DigitsAV(n_train=2, n_val=40, n_test=60, seed=0)
    fresh.load_state_dict(state)
    fresh_splits, control_splits = fresh.build(), control.build()
    assert fresh.tokenizer.vocab == dm.tokenizer.vocab
    assert control.tokenizer.vocab != dm.tokenizer.vocab  # the check below can fail
    for split in ("val", "test"):  # same texts (same seed and size) -> identical ids
        assert torch.equal(fresh_splits[split].tensors["inputs"]["text"], splits[split].tensors["inputs"]["text"])
    assert not torch.equal(control_splits["test"].tensors["inputs"]["text"], splits["test"].tensors["inputs"]["text"])
    assert fresh.spec.modalities["text"] == dm.spec.modalities["text"]


def test_digits_av_targets(digits):
    _, splits = digits
    for split, ds in splits.items():
        targets = ds.tensors["targets"]
        digit, parity, ink = targets["digit"], targets["parity"], targets["ink"]
        assert digit.dtype == torch.long and digit.min() >= 0 and digit.max() <= 9
        assert torch.equal(parity, (digit % 2).float())
        assert ink.shape == (len(digit), 1) and torch.isfinite(ink).all()
    train_ink = splits["train"].tensors["targets"]["ink"].double()
    assert abs(train_ink.mean().item()) < 1e-5
    assert abs(train_ink.std(unbiased=False).item() - 1) < 1e-4
    assert len(splits["train"].tensors["targets"]["digit"].unique()) == 10


# ------------------------------------------------------------------------------------------------ CLI

@pytest.mark.e2e
def test_cli_train_with_modality_dropout_then_eval(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "experiment=digits_av", *TINY_DATA, "data.n_train=64", "data.n_test=48",
                   *TINY_ENCODERS, "fusion.dim=16", "fusion.trunk=[16]", "data.modality_dropout=0.5",
                   "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    vocab = state["data"]["tokenizer"]["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) > 10
    assert state["config"]["data"]["modality_dropout"] == 0.5
    assert any(k.startswith("encoder.stages.0.encoders.text.") for k in state["model"])
    # the vocabulary is what the data module fits from the same training texts
    assert vocab == DigitsAV(n_train=64, n_val=16, n_test=48, seed=0).state_dict()["tokenizer"]["vocab"]

    trained = read_results(run)
    proc = run_cli("eval", f"checkpoint={best}", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    measured = read_results(tmp_path / "ev")
    test_metrics = {k: v for k, v in trained.items() if k.startswith("test/")}
    assert {"test/digit/accuracy", "test/parity/accuracy", "test/ink/rmse"} <= set(test_metrics)
    assert measured == test_metrics
    assert "robustness" not in json.loads((tmp_path / "ev" / "results.json").read_text())
