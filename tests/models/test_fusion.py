"""Fusion strategies (mtlrun.models.fusion): every one the shipped configs/fusion/*.yaml name, built from
its YAML, checked on 2, 3 and 4 modalities with different widths, token lengths and padding (pairwise by
default, the full grid with `pytest --exhaustive`).

The property that matters most: a missing modality's encoding never influences the output (exact
equality), while a present one does, and only for its own samples.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from mtlrun.config import config_dir
from mtlrun.engine import checkpoint
from mtlrun.engine.checkpoint import RENAMED_TARGETS, rename_targets
from mtlrun.errors import UsageError
from mtlrun.models import fusion as fusion_module
from mtlrun.models.base import MultiTaskModel
from mtlrun.models.backbone.base import Encoded

FUSION_DIR = Path(config_dir()) / "fusion"
FUSIONS = sorted(p.stem for p in FUSION_DIR.glob("*.yaml") if p.stem != "late")
EXPECTED = {"early", "concat", "sum", "mean", "weighted", "gated", "film", "attention", "cross_attention",
            "tensor", "low_rank", "embrace"}

# modality: (vector dim, token dim, token length, padded?)
MODALITIES = {"image": (12, 6, 5, False), "text": (8, 10, 7, True), "audio": (5, 4, 3, True),
              "tabular": (3, 3, 1, False)}
SETS = {"2": ["image", "text"], "3": ["image", "audio", "tabular"], "4": ["image", "text", "audio", "tabular"]}
B = 6


def dims_of(modalities):
    return ({m: MODALITIES[m][0] for m in modalities}, {m: MODALITIES[m][1] for m in modalities})


def build(name: str, modalities, **options):
    cfg = OmegaConf.load(FUSION_DIR / f"{name}.yaml")
    for key, value in options.items():
        cfg[key] = value
    dims, token_dims = dims_of(modalities)
    return instantiate(cfg, dims=dims, token_dims=token_dims)


def presence(modalities, batch: int = B) -> dict[str, torch.Tensor]:
    """Row 0: all; 1: only the first; 2: only the last; 3: none; 4: all but the first; 5: all but the
    second (repeated for larger batches)."""
    m_count = len(modalities)
    rows = [[True] * m_count, [i == 0 for i in range(m_count)], [i == m_count - 1 for i in range(m_count)],
            [False] * m_count, [i != 0 for i in range(m_count)], [i != 1 for i in range(m_count)]]
    rows = [rows[b % len(rows)] for b in range(batch)]
    table = torch.tensor(rows, dtype=torch.bool)
    return {m: table[:, i].clone() for i, m in enumerate(modalities)}


def encodings(modalities, batch: int = B, seed: int = 0) -> dict[str, Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        d, td, length, padded = MODALITIES[m]
        token_mask = None
        if padded:  # lengths 1..length, at least one real token per sample
            lengths = torch.arange(batch) % length + 1
            token_mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
        out[m] = Encoded(torch.randn(batch, d, generator=g), torch.randn(batch, length, td, generator=g),
                         token_mask)
    return out


def replace_rows(enc: Encoded, rows: torch.Tensor, fill: float | None, seed: int,
                 real_tokens_only: bool = False) -> Encoded:
    """enc with the vector and tokens of `rows` [B] bool replaced (random, or `fill`); real_tokens_only
    leaves padded tokens as they were."""
    g = torch.Generator().manual_seed(seed)

    def new(x):
        return torch.full_like(x, fill) if fill is not None else torch.randn(x.shape, generator=g) * 10

    vector = torch.where(rows.unsqueeze(1), new(enc.vector), enc.vector)
    token_rows = rows.unsqueeze(1).expand(enc.tokens.shape[:2])
    if real_tokens_only and enc.token_mask is not None:
        token_rows = token_rows & enc.token_mask
    tokens = torch.where(token_rows.unsqueeze(-1), new(enc.tokens), enc.tokens)
    token_mask = enc.token_mask
    if token_mask is not None and not real_tokens_only:  # a missing modality's padding does not matter either
        token_mask = torch.where(rows.unsqueeze(1), ~token_mask, token_mask)
    return Encoded(vector, tokens, token_mask)


def run(fusion, enc, mask, seed: int = 0):
    torch.manual_seed(seed)  # Embrace samples in training
    return fusion(enc, mask)


# The grid is fusion x modality set x check (the five tests below that take `name, modset`, one of them in
# eval and in train mode: six checks). The default run covers it pairwise: check c runs fusion i on set
# (i + c) % 3, so every check sees every fusion, every fusion every set (so every modality and every
# modality count) twice, and every check every set four times. The rest of the grid is marked
# `exhaustive`: `pytest --exhaustive` runs all of it.
def fusion_grid(check: int) -> list:
    """pytest.params (name, modset) over every fusion and set; those off the pairwise selection of `check`
    are marked exhaustive."""
    return [pytest.param(name, modset, id=f"{name}-{modset}",
                         marks=() if j == (i + check) % len(SETS) else pytest.mark.exhaustive)
            for i, name in enumerate(FUSIONS) for j, modset in enumerate(SETS)]


def _attends(name: str) -> bool:
    with torch.random.fork_rng():  # collection leaves the global RNG as it found it
        modules = build(name, SETS["3"]).modules()
        return any(isinstance(m, (torch.nn.MultiheadAttention, torch.nn.TransformerEncoder)) for m in modules)


ATTENTION_FUSIONS = [name for name in FUSIONS if _attends(name)]


def test_the_default_run_covers_the_grid_pairwise():
    runs = {(check, p.values) for check in range(6) for p in fusion_grid(check) if not p.marks}
    assert {(name, modset) for _, (name, modset) in runs} == {(n, s) for n in FUSIONS for s in SETS}
    assert {(check, name) for check, (name, _) in runs} == {(c, n) for c in range(6) for n in FUSIONS}
    assert {(check, modset) for check, (_, modset) in runs} == {(c, s) for c in range(6) for s in SETS}
    assert len(runs) == 6 * len(FUSIONS)


def test_every_fusion_has_a_config():
    """configs/fusion/<name>.yaml builds mtlrun/models/fusion/<name>.py's class; only late fusion combines
    predictions (and says so), the others are Fusions; none repeats its config name in a class attribute."""
    assert EXPECTED <= set(FUSIONS)
    assert {"early", "attention", "cross_attention"} <= set(ATTENTION_FUSIONS)
    for name in [*FUSIONS, "late"]:
        path = FUSION_DIR / f"{name}.yaml"
        assert path.read_text().startswith("#"), f"{name}.yaml starts with a comment saying what it does"
        cfg = OmegaConf.load(path)
        module, _, cls_name = cfg._target_.rpartition(".")
        assert module == f"mtlrun.models.fusion.{name}", cfg._target_
        cls = get_class(cfg._target_)
        assert cls.__doc__ and sys.modules[cls.__module__].__doc__, name
        assert not {"name", "method"} & set(vars(cls)), name
        assert getattr(fusion_module, cls_name) is cls  # mtlrun.models.fusion.<Class> still resolves
        if name == "late":
            assert issubclass(cls, MultiTaskModel) and cls.combines_predictions
            continue
        assert issubclass(cls, fusion_module.Fusion) and not cls.combines_predictions, name
        assert cfg.dim == 128 and list(cfg.trunk) == [256]
        assert "_partial_" not in cfg and "dims" not in cfg and "token_dims" not in cfg


def test_checkpoints_with_the_old_fusion_targets_still_load(tmp_path):
    """Before the split every fusion was mtlrun.models.fusion.<Class> and late fusion
    mtlrun.models.multimodal.LateFusion: checkpoint.load gives a stored config the current names."""
    for name in [*FUSIONS, "late"]:
        target = OmegaConf.load(FUSION_DIR / f"{name}.yaml")._target_
        cls_name = target.rpartition(".")[2]
        old = "mtlrun.models.multimodal.LateFusion" if name == "late" else f"mtlrun.models.fusion.{cls_name}"
        assert RENAMED_TARGETS[old] == target, name
        assert rename_targets({"fusion": {"_target_": old, "dim": 16}}) == {"fusion": {"_target_": target, "dim": 16}}
    path = tmp_path / "old.pt"
    checkpoint.save(path, {"mtlrun_version": "0", "format": 1, "model": {},
                           "config": {"fusion": {"_target_": "mtlrun.models.fusion.Concat", "trunk": [16]}}})
    assert checkpoint.load(path)["config"]["fusion"] == {"_target_": "mtlrun.models.fusion.concat.Concat",
                                                         "trunk": [16]}


@pytest.mark.parametrize("name, modset", fusion_grid(0))
def test_output_shape_finite_and_all_missing_samples(name, modset):
    modalities = SETS[modset]
    fusion = build(name, modalities)
    assert fusion.out_dim == fusion.dim == 128 and fusion.trunk == (256,)
    assert fusion.modalities == modalities
    enc, mask = encodings(modalities), presence(modalities)
    for training in (True, False):
        fusion.train(training)
        out = run(fusion, enc, mask)
        assert out.shape == (B, fusion.out_dim)
        assert torch.isfinite(out).all()
    # a batch where nothing is present: finite outputs and finite gradients
    fusion.train()
    none = {m: torch.zeros(B, dtype=torch.bool) for m in modalities}
    out = run(fusion, enc, none)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)
    fusion.eval()
    assert torch.isfinite(run(fusion, enc, none)).all()


@pytest.mark.parametrize("name, modset, training", [
    pytest.param(*p.values, training, id=f"{p.id}-{mode}", marks=p.marks)
    for training, mode, check in ((False, "eval", 1), (True, "train", 2)) for p in fusion_grid(check)])
def test_missing_modality_never_influences_the_output(name, modset, training):
    modalities = SETS[modset]
    fusion = build(name, modalities).train(training)
    enc, mask = encodings(modalities), presence(modalities)
    with torch.no_grad():
        base = run(fusion, enc, mask)
        for i, m in enumerate(modalities):
            missing = ~mask[m]
            assert missing.any() and mask[m].any()
            for fill in (None, float("nan"), float("inf")):  # an encoder fed a blank input may give these
                changed = {**enc, m: replace_rows(enc[m], missing, fill, seed=i + 1)}
                assert torch.equal(run(fusion, changed, mask), base), (m, fill)
            # padded tokens of a present modality are ignored as well
            if enc[m].token_mask is not None:
                pad = ~enc[m].token_mask
                assert pad.any()
                tokens = enc[m].tokens.masked_fill(pad.unsqueeze(-1), float("nan"))
                changed = {**enc, m: Encoded(enc[m].vector, tokens, enc[m].token_mask)}
                assert torch.equal(run(fusion, changed, mask), base), (m, "padding")


@pytest.mark.parametrize("name, modset", fusion_grid(3))
def test_present_modality_changes_its_samples_only(name, modset):
    modalities = SETS[modset]
    fusion = build(name, modalities).eval()
    enc, mask = encodings(modalities), presence(modalities)
    with torch.no_grad():
        base = fusion(enc, mask)
        for i, m in enumerate(modalities):
            present = mask[m]
            changed = {**enc, m: replace_rows(enc[m], present, None, seed=10 + i, real_tokens_only=True)}
            out = fusion(changed, mask)
            diff = (out - base).abs().amax(1)
            assert (diff[present] > 1e-4).all(), (m, diff)
            assert torch.equal(out[~present], base[~present]), m


def _named_for(name: str, modality: str) -> bool:
    return modality in name.split(".")


@pytest.mark.parametrize("name, modset", fusion_grid(4))
def test_gradients_reach_every_parameter(name, modset):
    modalities = SETS[modset]
    fusion = build(name, modalities).train()
    enc, mask = encodings(modalities), presence(modalities)
    out = run(fusion, enc, mask)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for pname, p in fusion.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if any(_named_for(pname, m) for m in modalities):  # a present modality's own path
            assert p.grad.abs().sum() > 0, pname
    assert sum(p.numel() for p in fusion.parameters()) > 0


@pytest.mark.parametrize("name, modset", fusion_grid(5))
def test_modality_missing_from_the_whole_batch_gets_no_gradient(name, modset):
    modalities = SETS[modset]
    gone = modalities[-1]
    fusion = build(name, modalities).train()
    enc, mask = encodings(modalities), presence(modalities)
    mask[gone] = torch.zeros(B, dtype=torch.bool)
    out = run(fusion, enc, mask)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
    own = [(n, p) for n, p in fusion.named_parameters() if _named_for(n, gone)]
    if name not in ("concat", "gated"):  # these two read all modalities through one shared layer
        assert own, "expected per-modality parameters"
    for pname, p in own:
        grad = p.grad if p.grad is not None else torch.zeros(())
        if name == "low_rank" and pname.startswith("factors."):
            grad = grad[:, :-1]  # the [0; 1] constant's row is a learned bias, used by design
        assert torch.equal(grad, torch.zeros_like(grad)), pname


@pytest.mark.parametrize("name", FUSIONS)
def test_autocast_bf16_on_cpu(name):
    modalities = SETS["4"]
    fusion = build(name, modalities).train()
    enc, mask = encodings(modalities), presence(modalities)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(fusion, enc, mask)
        fusion.eval()
        evaluated = run(fusion, enc, mask)
    assert out.shape == evaluated.shape == (B, fusion.out_dim)
    assert torch.isfinite(out.float()).all() and torch.isfinite(evaluated.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------ by formula

def test_mean_and_sum_are_over_present_projections():
    modalities = SETS["3"]
    enc, mask = encodings(modalities), presence(modalities)
    mean, total = build("mean", modalities).eval(), build("sum", modalities).eval()
    total.load_state_dict(mean.state_dict())
    with torch.no_grad():
        proj = torch.stack([mean.project[m](enc[m].vector) for m in modalities], 1)
        present = torch.stack([mask[m] for m in modalities], 1).float()
        expected_sum = (proj * present.unsqueeze(-1)).sum(1)
        expected_mean = expected_sum / present.sum(1, keepdim=True).clamp(min=1)
        torch.testing.assert_close(total(enc, mask), expected_sum)
        torch.testing.assert_close(mean(enc, mask), expected_mean)
        assert torch.equal(mean(enc, mask)[3], torch.zeros(128))  # nothing present


def test_concat_zero_fills_missing_vectors():
    modalities = SETS["2"]
    enc, mask = encodings(modalities), presence(modalities)
    fusion = build("concat", modalities, dim=16).eval()
    x = torch.cat([enc[m].vector * mask[m].unsqueeze(1) for m in modalities], 1)
    with torch.no_grad():
        torch.testing.assert_close(fusion(enc, mask), torch.relu(fusion.project(x)))


def test_weighted_weights_renormalise_over_present_modalities():
    modalities = SETS["4"]
    fusion = build("weighted", modalities, dim=16).eval()
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0]))
    enc, mask = encodings(modalities), presence(modalities)
    w = fusion.weights(mask)
    logits = fusion.logits.detach()
    for b in range(B):
        present = torch.tensor([bool(mask[m][b]) for m in modalities])
        expected = torch.zeros(4)
        if present.any():
            expected[present] = torch.softmax(logits[present], 0)
        torch.testing.assert_close(w[b], expected)
    # e.g. row 1 (image only) gets weight 1 on image whatever its logit
    assert w[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(w[4, 1:], torch.softmax(logits[1:], 0))
    with torch.no_grad():
        proj = torch.stack([fusion.project[m](enc[m].vector) for m in modalities], 1)
        torch.testing.assert_close(fusion(enc, mask), (w.unsqueeze(-1) * proj).sum(1))


def test_gated_is_a_per_feature_softmax_over_present_modalities():
    modalities = SETS["3"]
    fusion = build("gated", modalities, dim=16).eval()
    enc, mask = encodings(modalities), presence(modalities)
    with torch.no_grad():
        xs = [enc[m].vector * mask[m].unsqueeze(1) for m in modalities]
        h = torch.stack([torch.tanh(fusion.hidden[m](x)) for m, x in zip(modalities, xs)], 1)
        z = fusion.gate(torch.cat(xs, 1)).view(B, 3, 16)
        present = torch.stack([mask[m] for m in modalities], 1).unsqueeze(-1)
        z = torch.softmax(z.masked_fill(~present, -1e9), 1) * present
        torch.testing.assert_close(fusion(enc, mask), (z * h).sum(1))


def test_film_without_context_is_the_primary_projection():
    modalities = SETS["3"]
    enc = encodings(modalities)
    for primary in (None, "audio"):
        fusion = build("film", modalities, primary=primary).eval()
        p = primary or modalities[0]
        assert fusion.primary == p
        alone = {m: torch.tensor([m == p] * B) for m in modalities}
        with torch.no_grad():
            out = fusion(enc, alone)
            assert torch.equal(out, fusion.project_primary(enc[p].vector))
            # primary missing: beta(c) only, c = mean of the present context projections
            context_only = {m: torch.tensor([m != p] * B) for m in modalities}
            c = torch.stack([fusion.project_context[m](enc[m].vector) for m in fusion.context], 1).mean(1)
            torch.testing.assert_close(fusion(enc, context_only), fusion.beta(c))
            # both: (1 + gamma(c)) * p + beta(c)
            everything = {m: torch.ones(B, dtype=torch.bool) for m in modalities}
            expected = (1 + fusion.gamma(c)) * fusion.project_primary(enc[p].vector) + fusion.beta(c)
            torch.testing.assert_close(fusion(enc, everything), expected)


def test_tensor_fusion_is_the_outer_product_of_the_augmented_projections():
    modalities = SETS["2"]
    fusion = build("tensor", modalities, dim=16, rank_dim=3).eval()
    assert fusion.out.in_features == 4 * 4
    enc, mask = encodings(modalities), presence(modalities)
    with torch.no_grad():
        zs = []
        for m in modalities:
            h = fusion.project[m](enc[m].vector) * mask[m].unsqueeze(1)
            zs.append(torch.cat([h, torch.ones(B, 1)], 1))
        outer = (zs[0].unsqueeze(2) * zs[1].unsqueeze(1)).reshape(B, 16)
        torch.testing.assert_close(fusion(enc, mask), torch.relu(fusion.out(outer)))
        assert build("tensor", SETS["4"], rank_dim=2).out.in_features == 3 ** 4


def test_low_rank_fusion_formula():
    modalities = SETS["3"]
    fusion = build("low_rank", modalities, dim=16, rank=3, rank_dim=5).eval()
    assert fusion.factors["image"].shape == (3, 6, 16)
    enc, mask = encodings(modalities), presence(modalities)
    with torch.no_grad():
        expected = torch.zeros(B, 16)
        for b in range(B):
            for r in range(3):
                term = torch.ones(16)
                for m in modalities:
                    h = fusion.project[m](enc[m].vector[b]) if mask[m][b] else torch.zeros(5)
                    term = term * (torch.cat([h, torch.ones(1)]) @ fusion.factors[m][r])
                expected[b] += term
        expected += fusion.bias
        torch.testing.assert_close(fusion(enc, mask), expected)


def test_embrace_training_takes_each_feature_from_one_present_modality():
    modalities = SETS["4"]
    batch = 48
    fusion = build("embrace", modalities, dim=32).train()
    enc, mask = encodings(modalities, batch), presence(modalities, batch)
    with torch.no_grad():
        docked = fusion.docked(enc, mask)  # [B, M, dim]
        out = run(fusion, enc, mask, seed=5)
    present = torch.stack([mask[m] for m in modalities], 1)
    matches = out.unsqueeze(1) == docked  # [B, M, dim]
    assert (matches & present.unsqueeze(-1)).any(1)[present.any(1)].all()
    assert torch.equal(out[~present.any(1)], torch.zeros(int((~present.any(1)).sum()), 32))
    # every present modality is drawn somewhere in a sample with all four (features where the docks differ)
    unique = (matches.sum(1) == 1)  # the feature identifies its source
    for b in torch.nonzero(present.all(1)).flatten().tolist():
        sources = matches[b][:, unique[b]].float().argmax(0)
        assert set(sources.tolist()) == {0, 1, 2, 3}
    # a new draw differs, a same-seed draw does not
    with torch.no_grad():
        assert torch.equal(run(fusion, enc, mask, seed=5), out)
        assert not torch.equal(run(fusion, enc, mask, seed=6), out)


def test_embrace_probabilities_weight_the_draw_and_the_expectation():
    modalities = SETS["2"]
    fusion = build("embrace", modalities, dim=64, probabilities={"image": 3.0, "text": 1.0, "audio": 9.0})
    torch.testing.assert_close(fusion.weights, torch.tensor([3.0, 1.0]))  # audio: not one of the model's
    batch = 400
    enc = encodings(modalities, batch)
    both = {m: torch.ones(batch, dtype=torch.bool) for m in modalities}
    with torch.no_grad():
        docked = fusion.docked(enc, both)
        out = run(fusion.train(), enc, both, seed=0)
        differ = docked[:, 0] != docked[:, 1]
        from_image = (out == docked[:, 0])[differ].float().mean()
        assert abs(from_image - 0.75) < 0.03, from_image
        fusion.eval()
        torch.testing.assert_close(fusion(enc, both), 0.75 * docked[:, 0] + 0.25 * docked[:, 1])
        only_text = {"image": torch.zeros(batch, dtype=torch.bool), "text": torch.ones(batch, dtype=torch.bool)}
        torch.testing.assert_close(fusion(enc, only_text), fusion.docked(enc, only_text)[:, 1])
    listed = build("embrace", modalities, probabilities=[1.0, 4.0])
    torch.testing.assert_close(listed.selection(presence(modalities))[0], torch.tensor([0.2, 0.8]))


@pytest.mark.parametrize("name", ATTENTION_FUSIONS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_attention_never_gets_a_sample_with_every_key_masked(name, training, monkeypatch):
    """Attention over all-masked keys is nan in PyTorch's encoder-layer fast path (and in
    nn.MultiheadAttention before 2.5, gradients included): the fusions must never ask for it."""
    seen = []

    def checked(original, mask_arg):
        def forward(self, *args, **kwargs):
            mask = kwargs.get(mask_arg)
            if mask is not None:
                seen.append(mask)
                assert not mask.all(-1).any(), "a sample with every key masked"
            return original(self, *args, **kwargs)
        return forward

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward",
                        checked(torch.nn.MultiheadAttention.forward, "key_padding_mask"))
    monkeypatch.setattr(torch.nn.TransformerEncoder, "forward",
                        checked(torch.nn.TransformerEncoder.forward, "src_key_padding_mask"))
    modalities = SETS["3"]
    fusion = build(name, modalities).train(training)
    enc, mask = encodings(modalities), presence(modalities)
    assert not any(mask[m][3] for m in modalities)  # row 3 has nothing
    out = run(fusion, enc, mask)
    assert seen and torch.isfinite(out).all()


def test_attention_fusions_ignore_masked_keys_when_only_one_modality_is_present():
    """cross_attention: a query with no other present modality keeps LayerNorm(q) (no nan from an
    all-masked attention)."""
    modalities = SETS["2"]
    fusion = build("cross_attention", modalities, dim=16).eval()
    enc = encodings(modalities)
    only_image = {"image": torch.ones(B, dtype=torch.bool), "text": torch.zeros(B, dtype=torch.bool)}
    with torch.no_grad():
        expected = fusion.norm["image"](fusion.query["image"](enc["image"].vector))
        torch.testing.assert_close(fusion(enc, only_image), expected)


# ------------------------------------------------------------------------------------------ bad options

BAD = [
    ("attention", SETS["4"], {"heads": 3}, "fusion.heads"),
    ("early", SETS["4"], {"heads": 5}, "fusion.heads"),
    ("cross_attention", SETS["4"], {"heads": 3}, "fusion.heads"),
    ("attention", SETS["2"], {"layers": 0}, "fusion.layers"),
    ("early", SETS["2"], {"dropout": 1.5}, "fusion.dropout"),
    ("early", SETS["2"], {"ff_mult": 0}, "fusion.ff_mult"),
    ("film", SETS["3"], {"primary": "video"}, "fusion.primary"),
    ("film", ["image"], {}, "data.modalities"),
    ("cross_attention", ["text"], {}, "data.modalities"),
    ("tensor", SETS["2"], {"rank_dim": 0}, "fusion.rank_dim"),
    ("tensor", SETS["4"], {"rank_dim": 64}, "fusion.rank_dim"),
    ("low_rank", SETS["2"], {"rank": 0}, "fusion.rank"),
    ("low_rank", SETS["2"], {"rank_dim": -1}, "fusion.rank_dim"),
    ("embrace", SETS["2"], {"probabilities": [1.0]}, "fusion.probabilities"),
    ("embrace", SETS["2"], {"probabilities": {"image": 1.0}}, "fusion.probabilities"),
    ("embrace", SETS["2"], {"probabilities": [1.0, -2.0]}, "fusion.probabilities"),
    ("embrace", SETS["2"], {"probabilities": "uniform"}, "fusion.probabilities"),
    ("concat", SETS["2"], {"dim": 0}, "fusion.dim"),
    ("mean", SETS["2"], {"trunk": [64, 0]}, "fusion.trunk"),
]


@pytest.mark.parametrize("name, modalities, options, key", BAD,
                         ids=[f"{n}-{k}-{i}" for i, (n, _, _, k) in enumerate(BAD)])
def test_bad_options_raise_a_usage_error_naming_the_key(name, modalities, options, key):
    with pytest.raises(Exception) as info:
        build(name, modalities, **options)
    error = info.value
    while not isinstance(error, UsageError) and error.__cause__ is not None:  # hydra wraps it
        error = error.__cause__
    assert isinstance(error, UsageError), repr(info.value)
    assert key in str(error)


def test_bad_primary_lists_the_valid_names():
    with pytest.raises(UsageError, match="image, audio, tabular"):
        fusion_module.FiLM(*dims_of(SETS["3"]), primary="video")
    with pytest.raises(UsageError, match=r"fusion.heads=3 does not divide fusion.dim=128"):
        fusion_module.Attention(*dims_of(SETS["2"]), heads=3)
    assert math.isclose(fusion_module.Attention(*dims_of(SETS["2"]), dim=12, heads=3).dim, 12)
