"""Robustness evaluation: the corruptions (mtlrun.data.corruption) and the `mtlrun eval robustness.*` sweep.

The unit tests check what each noise does at a level, that level 0 is the identity and that a sweep is a
pure function of the generator's seed. The CLI tests train one tiny digits_av model and sweep it.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from contracts import read_results, run_cli
from mtlrun.data.base import DataSpec, ModalityInfo
from mtlrun.data.corruption import AUDIO_CHUNK, NOISES, PROBABILITY_NOISES, corrupt, noises_for
from mtlrun.errors import UsageError
from mtlrun.eval import area, robustness_sweep

B = 64
VOCAB = 30
MAX_LEN = 48


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(seed: int = 0) -> dict:
    """One batch with an input of every kind: no exact zeros in the float inputs (so a zeroed entry is a
    corrupted one), texts of 3..40 real tokens right-padded with 0."""
    g = gen(seed)
    lengths = torch.randint(3, 41, (B,), generator=g)
    ids = torch.randint(2, VOCAB, (B, MAX_LEN), generator=g)
    ids = ids.masked_fill(torch.arange(MAX_LEN) >= lengths[:, None], 0)
    amplitude = torch.rand(B, 1, generator=g) * 3 + 0.1  # clips of very different loudness
    return {
        "inputs": {"image": torch.rand(B, 3, 16, 16, generator=g) + 0.5,
                   "text": ids,
                   "audio": torch.randn(B, 2048, generator=g) * amplitude,
                   "tabular": torch.randn(B, 10, generator=g) + 10},
        "targets": {"y": torch.arange(B)},
    }


KIND_NOISES = [(kind, noise) for kind in ("image", "text", "audio", "tabular") for noise in noises_for(kind)]


def clone(batch: dict) -> dict:
    return {k: {n: t.clone() for n, t in group.items()} for k, group in batch.items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys(), k
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), (k, n)


def test_noises_by_kind():
    assert noises_for("image") == ("gaussian", "occlusion", "missing")
    assert noises_for("text") == ("swap", "drop", "missing")
    assert noises_for("audio") == ("white", "dropout", "missing")
    assert noises_for("tabular") == ("feature_dropout", "missing")
    assert set(PROBABILITY_NOISES) == {n for ns in NOISES.values() for n in ns} - {"gaussian", "white"} | {"missing"}


@pytest.mark.parametrize("kind, noise", KIND_NOISES, ids=[f"{k}-{n}" for k, n in KIND_NOISES])
def test_level_zero_identity_determinism_and_no_side_effects(kind, noise):
    batch = make_batch()
    original = clone(batch)
    assert corrupt(batch, kind, kind, noise, 0, gen(0)) is batch
    assert corrupt(batch, kind, kind, noise, 0.0, gen(0)) is batch
    a = corrupt(batch, kind, kind, noise, 0.5, gen(3))
    b = corrupt(batch, kind, kind, noise, 0.5, gen(3))
    c = corrupt(batch, kind, kind, noise, 0.5, gen(4))
    assert_same(a, b)
    assert not torch.equal(a["inputs"][kind], c["inputs"][kind])
    assert not torch.equal(a["inputs"][kind], batch["inputs"][kind])  # level 0.5 does corrupt
    assert_same(batch, original)  # nothing changed in place
    for other in batch["inputs"]:  # only the chosen modality is touched
        if other != kind:
            assert a["inputs"][other] is batch["inputs"][other]
    assert a["targets"] is batch["targets"]
    assert ("modality_mask" in a) == (noise == "missing")


# --------------------------------------------------------------------------------------------- text

def test_swap_keeps_tokens_and_padding_and_swaps_neighbours():
    ids = make_batch()["inputs"]["text"]
    out = corrupt({"inputs": {"text": ids}}, "text", "text", "swap", 0.5, gen(0))["inputs"]["text"]
    assert torch.equal(out.sort(1).values, ids.sort(1).values)  # each row's multiset of tokens
    assert torch.equal(out == 0, ids == 0)  # padding stays where it was
    moved = out != ids
    assert moved.any()
    # every change is an exchange of neighbours: out[i] = ids[i + 1] and out[i + 1] = ids[i]
    left = torch.cat([ids[:, :1], ids[:, :-1]], 1)
    right = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
    assert ((out == ids) | (out == left) | (out == right)).all()
    # about half of the real positions are involved in a swap: not every token moves, not none
    real = (ids != 0).sum().item()
    assert 0.1 * real < moved.sum().item() < 0.9 * real


def test_swap_level_one_swaps_consecutive_pairs():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [2, 3, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0]])
    out = corrupt({"inputs": {"text": ids}}, "text", "text", "swap", 1.0, gen(0))["inputs"]["text"]
    assert out.tolist() == [[6, 5, 8, 7, 9, 0, 0], [3, 2, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0]]


def test_drop_keeps_order_and_pads_the_tail():
    ids = make_batch()["inputs"]["text"]
    out = corrupt({"inputs": {"text": ids}}, "text", "text", "drop", 0.3, gen(0))["inputs"]["text"]
    assert out.shape == ids.shape
    dropped = 0
    for row_in, row_out in zip(ids.tolist(), out.tolist()):
        real = [t for t in row_in if t != 0]
        kept = [t for t in row_out if t != 0]
        n = len(kept)
        assert row_out[:n] == kept and all(t == 0 for t in row_out[n:])  # kept first, padding after
        it = iter(real)  # kept is a subsequence of the real tokens, in order
        assert all(any(t == r for r in it) for t in kept)
        dropped += len(real) - n
    total = (ids != 0).sum().item()
    std = math.sqrt(0.3 * 0.7 / total)
    assert abs(dropped / total - 0.3) < 5 * std
    level_one = corrupt({"inputs": {"text": ids}}, "text", "text", "drop", 1.0, gen(0))["inputs"]["text"]
    assert (level_one == 0).all()  # every text emptied


# -------------------------------------------------------------------------------------------- image

@pytest.mark.parametrize("level", [0.25, 0.3, 0.5, 1.0])
def test_occlusion_zeroes_a_square_of_about_level_of_the_image(level):
    x = make_batch()["inputs"]["image"]
    out = corrupt({"inputs": {"image": x}}, "image", "image", "occlusion", level, gen(0))["inputs"]["image"]
    zero = out == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # the same square in every channel
    assert torch.equal(out[~zero], x[~zero])  # the rest untouched
    side = round(math.sqrt(level) * 16)
    per_sample = zero[:, 0].flatten(1).sum(1)
    assert (per_sample == side * side).all()
    assert abs(side * side - level * 256) <= 0.1 * level * 256 + 1  # ~ level * H * W
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)  # a square: side rows x side columns
    assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()
    if level < 1:  # at a random place per sample
        assert len({tuple(r.nonzero()[0].tolist() + c.nonzero()[0].tolist()) for r, c in zip(rows, cols)}) > 5


@pytest.mark.parametrize("level", [0.1, 1.0, 3.0])
def test_gaussian_adds_noise_of_std_level(level):
    x = make_batch()["inputs"]["image"]
    out = corrupt({"inputs": {"image": x}}, "image", "image", "gaussian", level, gen(0))["inputs"]["image"]
    noise = out - x
    assert abs(noise.mean().item()) < 0.05 * level
    assert abs(noise.std().item() / level - 1) < 0.02


# -------------------------------------------------------------------------------------------- audio

@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_white_noise_rms_is_level_times_signal_rms(level):
    x = make_batch()["inputs"]["audio"]
    out = corrupt({"inputs": {"audio": x}}, "audio", "audio", "white", level, gen(0))["inputs"]["audio"]
    signal_rms = x.pow(2).mean(1).sqrt()
    noise_rms = (out - x).pow(2).mean(1).sqrt()
    ratio = noise_rms / (level * signal_rms)  # per clip: the noise follows each clip's own loudness
    assert (ratio - 1).abs().max() < 0.1  # 2048 samples: the RMS estimate is within a few percent
    assert abs(ratio.mean().item() - 1) < 0.02


@pytest.mark.parametrize("length", [2048, 2000])
@pytest.mark.parametrize("level", [0.2, 0.7])
def test_audio_dropout_silences_whole_chunks(level, length):
    x = make_batch()["inputs"]["audio"][:, :length]
    out = corrupt({"inputs": {"audio": x}}, "audio", "audio", "dropout", level, gen(0))["inputs"]["audio"]
    silent = out == 0
    assert torch.equal(out[~silent], x[~silent])
    chunks = math.ceil(length / AUDIO_CHUNK)
    padded = torch.cat([silent, silent[:, -1:].expand(-1, chunks * AUDIO_CHUNK - length)], 1)
    per_chunk = padded.view(B, chunks, AUDIO_CHUNK)
    whole = per_chunk.all(2)
    assert torch.equal(per_chunk.any(2), whole)  # a chunk is silenced entirely or not at all
    rate = whole.float().mean().item()
    std = math.sqrt(level * (1 - level) / whole.numel())
    assert abs(rate - level) < 5 * std


# ------------------------------------------------------------------------------------------ tabular

@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_feature_dropout_zeroes_about_level_of_the_features(level):
    x = torch.randn(1000, 10, generator=gen(5)) + 10
    out = corrupt({"inputs": {"tabular": x}}, "tabular", "tabular", "feature_dropout", level,
                  gen(0))["inputs"]["tabular"]
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    std = math.sqrt(level * (1 - level) / x.numel())
    assert abs(zero.float().mean().item() - level) < 5 * std
    per_column = zero.float().mean(0)  # every feature, categorical columns included
    # each feature independently: rows entirely dropped or entirely kept are as rare as chance makes them
    constant_rows = (zero.all(1) | (~zero).all(1)).float().mean().item()
    assert constant_rows < level ** 10 + (1 - level) ** 10 + 0.05
    assert ((per_column - level).abs() < 5 * math.sqrt(level * (1 - level) / 1000)).all()


# -------------------------------------------------------------------------------------------- missing

@pytest.mark.parametrize("kind", ["image", "text", "audio", "tabular"])
def test_missing_clears_mask_and_zeroes_input(kind):
    n = 2000
    x = make_batch()["inputs"][kind].repeat(n // B + 1, *[1] * (make_batch()["inputs"][kind].dim() - 1))[:n]
    given = torch.arange(n) % 4 != 0  # a quarter of the samples already lack the modality
    batch = {"inputs": {kind: x, "other": torch.ones(n, 3)}, "modality_mask": {kind: given, "other": given}}
    out = corrupt(batch, kind, kind, "missing", 0.4, gen(0))
    mask = out["modality_mask"][kind]
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert not mask[~given].any()  # an existing False stays False
    assert out["modality_mask"]["other"] is given  # other entries kept
    gone = given & ~mask  # lost now, among those that had it
    rate = gone.float().sum().item() / given.sum().item()
    std = math.sqrt(0.4 * 0.6 / given.sum().item())
    assert abs(rate - 0.4) < 5 * std
    flat_out, flat_x = out["inputs"][kind].flatten(1), x.flatten(1)
    assert (flat_out[gone] == 0).all()
    assert torch.equal(flat_out[mask], flat_x[mask])  # the samples still present are untouched
    # without a mask in the batch, every sample starts present
    plain = corrupt({"inputs": {kind: x}}, kind, kind, "missing", 1.0, gen(0))
    assert not plain["modality_mask"][kind].any() and (plain["inputs"][kind] == 0).all()


# ------------------------------------------------------------------------------- sweep validation

SPEC = DataSpec({"image": ModalityInfo("image", (1, 8, 8)), "text": ModalityInfo("text", (48,)),
                 "audio": ModalityInfo("audio", (2048,)), "tabular": ModalityInfo("tabular", (10,))})


def sweep_cfg(modality="image", noise="gaussian", levels=(0, 0.5, 1), seed=0):
    return OmegaConf.create({"modality": modality, "noise": noise,
                             "levels": None if levels is None else list(levels), "seed": seed})


def test_sweep_validation_accepts():
    assert robustness_sweep(sweep_cfg(None, None), SPEC) is None
    assert robustness_sweep(sweep_cfg(), SPEC) == ("image", "image", "gaussian", [0.0, 0.5, 1.0], 0)
    # gaussian / white are not probabilities: levels above 1 are fine
    assert robustness_sweep(sweep_cfg("audio", "white", [0, 2, 10], 3), SPEC)[3:] == ([0.0, 2.0, 10.0], 3)
    assert robustness_sweep(sweep_cfg("tabular", "missing", [1]), SPEC)[3] == [1.0]


@pytest.mark.parametrize("kwargs, key, listed", [
    ({"modality": "video"}, "robustness.modality", "image, text, audio, tabular"),
    ({"modality": None, "noise": "gaussian"}, "robustness.modality", "image, text, audio, tabular"),
    ({"noise": "swap"}, "robustness.noise", "gaussian, occlusion, missing"),
    ({"noise": None}, "robustness.noise", "gaussian, occlusion, missing"),
    ({"modality": "tabular", "noise": "white"}, "robustness.noise", "feature_dropout, missing"),
    ({"levels": [0.5, 0.2]}, "robustness.levels", "increasing"),
    ({"levels": [0, 0.5, 0.5]}, "robustness.levels", "distinct"),
    ({"levels": []}, "robustness.levels", "increasing"),
    ({"levels": None}, "robustness.levels", "increasing"),
    ({"levels": [-0.1, 0.5]}, "robustness.levels", ">= 0"),
    ({"noise": "occlusion", "levels": [0, 1.5]}, "robustness.levels", "in [0, 1]"),
    ({"modality": "text", "noise": "missing", "levels": [0, 2]}, "robustness.levels", "in [0, 1]"),
    ({"levels": [0, True]}, "robustness.levels", "increasing"),
    ({"levels": [0, "x"]}, "robustness.levels", "increasing"),
    ({"levels": [0, float("nan")]}, "robustness.levels", "increasing"),
    ({"levels": [0, float("inf")]}, "robustness.levels", "increasing"),
    ({"seed": "x"}, "robustness.seed", "integer"),
    ({"seed": True}, "robustness.seed", "integer"),
    ({"seed": 1.5}, "robustness.seed", "integer"),
])
def test_sweep_validation_refuses(kwargs, key, listed):
    with pytest.raises(UsageError) as info:
        robustness_sweep(sweep_cfg(**kwargs), SPEC)
    assert key in str(info.value) and listed in str(info.value)


def test_area_is_the_trapezoid_mean():
    assert area([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert area([0.0, 0.25, 1.0], [1.0, 1.0, 0.0]) == pytest.approx((0.25 * 1 + 0.75 * 0.5) / 1.0)
    assert area([0.0, 2.0], [4.0, 2.0]) == pytest.approx(3.0)
    assert area([0.5], [0.7]) == 0.7


# -------------------------------------------------------------------------------------------- CLI

TRAIN = ["experiment=digits_av", "data.n_train=64", "data.n_val=16", "data.n_test=48", "data.batch_size=16",
         "data.eval_batch_size=16", "backbone.image.channels=[8,16]", "backbone.image.out_dim=16",
         "backbone.audio.channels=[4,8]", "backbone.audio.out_dim=16", "backbone.text.hidden=8",
         "backbone.text.embed_dim=8", "backbone.text.out_dim=16", "backbone.tabular.hidden=[16]",
         "backbone.tabular.out_dim=16", "fusion.dim=16", "fusion.trunk=[16]", "trainer.max_epochs=2",
         "trainer.device=cpu", "trainer.progress_bar=false"]
IMAGE_SWEEP = ["robustness.modality=image", "robustness.noise=gaussian", "robustness.levels=[0,0.5,1]"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("robust") / "train"
    proc = run_cli("train", *TRAIN, f"hydra.run.dir={run}", cwd=run.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run / "checkpoints" / "best.pt"


def eval_run(checkpoint, out, *overrides):
    proc = run_cli("eval", f"checkpoint={checkpoint}", *overrides, f"hydra.run.dir={out}", cwd=out.parent)
    return proc, out


@pytest.fixture(scope="module")
def image_sweep(checkpoint):
    proc, out = eval_run(checkpoint, checkpoint.parents[2] / "sweep", *IMAGE_SWEEP)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


@pytest.mark.e2e
def test_image_sweep_results(image_sweep, checkpoint):
    out, proc = image_sweep
    payload = json.loads((out / "results.json").read_text())
    rob = payload["robustness"]
    assert rob["modality"] == "image" and rob["noise"] == "gaussian" and rob["seed"] == 0
    assert rob["levels"] == [0, 0.5, 1]
    curves, auc = rob["metrics"], rob["auc"]
    assert set(curves) == set(auc) == set(payload["metrics"])
    assert {"test/digit/accuracy", "test/parity/accuracy", "test/ink/rmse", "test/ink/loss"} <= set(curves)
    for key, curve in curves.items():
        assert len(curve) == 3 and all(math.isfinite(v) for v in curve), key
        trapezoid = (0.5 * (curve[0] + curve[1]) / 2 + 0.5 * (curve[1] + curve[2]) / 2) / 1.0
        assert auc[key] == pytest.approx(trapezoid, rel=1e-12, abs=1e-12), key
        assert payload["metrics"][key] == curve[0], key  # `metrics` = the clean (level 0) evaluation
    # noise of std 1 on images in [0, 1] changes the model's losses
    assert curves["test/digit/loss"][2] != curves["test/digit/loss"][0]
    assert curves["test/ink/loss"][2] != curves["test/ink/loss"][0]
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3
    assert [float(r["level"]) for r in rows] == [0.0, 0.5, 1.0]
    assert {r["split"] for r in rows} == {"test"}
    for row, i in zip(rows, range(3)):
        assert float(row["digit/loss"]) == pytest.approx(curves["test/digit/loss"][i], rel=1e-5)
    assert "robustness of test to gaussian on image" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_sweep_level_zero_equals_plain_eval_and_training(image_sweep, checkpoint):
    out, _ = image_sweep
    proc, plain = eval_run(checkpoint, out.parent / "plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain_metrics = read_results(plain)
    assert read_results(out) == plain_metrics
    trained = read_results(checkpoint.parents[1])
    assert plain_metrics == {k: v for k, v in trained.items() if k.startswith("test/")}
    assert "robustness" not in json.loads((plain / "results.json").read_text())
    assert not (plain / "robustness.png").exists()


@pytest.mark.e2e
def test_sweep_is_reproducible(image_sweep, checkpoint):
    out, _ = image_sweep
    proc, again = eval_run(checkpoint, out.parent / "again", *IMAGE_SWEEP)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = json.loads((out / "results.json").read_text())
    second = json.loads((again / "results.json").read_text())
    assert first["robustness"] == second["robustness"] and first["metrics"] == second["metrics"]


@pytest.mark.e2e
def test_text_missing_sweep(checkpoint):
    proc, out = eval_run(checkpoint, checkpoint.parents[2] / "text", "robustness.modality=text",
                         "robustness.noise=missing", "robustness.seed=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rob = json.loads((out / "results.json").read_text())["robustness"]
    assert rob["levels"] == [0.0, 0.25, 0.5, 0.75, 1.0] and rob["seed"] == 3 and rob["noise"] == "missing"
    loss = rob["metrics"]["test/parity/loss"]
    assert len(loss) == 5 and all(math.isfinite(v) for v in loss)
    assert loss[4] != loss[0]  # every text missing: the predictions change
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 5


@pytest.mark.e2e
@pytest.mark.parametrize("overrides, key, listed", [
    (["robustness.modality=video", "robustness.noise=gaussian"], "robustness.modality",
     "image, audio, text, tabular"),
    (["robustness.modality=image", "robustness.noise=swap"], "robustness.noise", "gaussian, occlusion, missing"),
    (["robustness.modality=audio", "robustness.noise=dropout", "robustness.levels=[0,1.5]"], "robustness.levels",
     "in [0, 1]"),
], ids=["modality", "noise", "levels"])
def test_cli_errors(checkpoint, tmp_path, overrides, key, listed):
    proc, _ = eval_run(checkpoint, tmp_path / "ev", *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert key in proc.stderr and listed in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ev" / "results.json").exists()
