"""The tokenizer and the text, audio and tabular encoders, each built from its shipped config."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from mtlrun.config import config_dir
from mtlrun.instantiate import instantiate_node
from mtlrun.data.text import Tokenizer
from mtlrun.errors import UsageError
from mtlrun.models.backbone.audio import (
    LogSpectrogram,
    SpectrogramCNN,
    WaveformCNN,
    mel_filterbank,
)
from mtlrun.models.backbone.base import Encoder, StagedEncoder
from mtlrun.models.backbone.tabular import TabularMLP
from mtlrun.models.backbone.text import RNNText, TransformerText

BACKBONES = Path(config_dir()) / "backbone"
SR = 8000
ARGS = {  # what the data would pass (ModalityInfo.args) for each kind
    "text": {"vocab_size": 30, "max_len": 24},
    "audio": {"sample_rate": SR, "num_samples": 1024},
    "tabular": {"num_numeric": 3, "cardinalities": [4, 2]},
}
CLASSES = {"text/gru": RNNText, "text/lstm": RNNText, "text/transformer": TransformerText,
           "audio/conv1d": WaveformCNN, "audio/spectrogram": SpectrogramCNN, "tabular/mlp": TabularMLP}
# the optional transformers encoder (pip install "mtlrun[hf]"), built small with random weights: the same checks
DEFAULTS = {"text/hf": {"pretrained": False, "config": {"model_type": "bert", "hidden_size": 32,
                                                         "num_hidden_layers": 2, "num_attention_heads": 2,
                                                         "intermediate_size": 64}}}
if importlib.util.find_spec("transformers"):
    from mtlrun.models.backbone.hf_text import HFText

    CLASSES["text/hf"] = HFText
OPTIONS = list(CLASSES)
TEXT_OPTIONS = [o for o in OPTIONS if o.startswith("text/")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make(option: str, **overrides) -> Encoder:
    """The encoder of configs/backbone/<option>.yaml, built as the CLI builds it."""
    node = OmegaConf.load(BACKBONES / f"{option}.yaml")
    node.merge_with(DEFAULTS.get(option, {}), overrides)
    return instantiate(node, **ARGS[option.split("/")[0]])


def text_ids(batch: int = 6, length: int = 16, vocab: int = 30) -> torch.Tensor:
    """Right-padded ids of random lengths 0..length (row 0 empty, row 1 full)."""
    ids = torch.randint(2, vocab, (batch, length))
    lengths = torch.randint(0, length + 1, (batch,))
    lengths[0], lengths[1] = 0, length
    ids[torch.arange(length) >= lengths[:, None]] = 0
    ids[2, 0] = 1  # an unknown token is a real token
    return ids


def tabular_rows(batch: int = 8) -> torch.Tensor:
    codes = torch.stack([torch.randint(0, 5, (batch,)), torch.randint(0, 3, (batch,))], 1).float()
    return torch.cat([torch.randn(batch, 3), codes], 1)


def tone(freq: float, batch: int = 1, num_samples: int = 1024, phase=None) -> torch.Tensor:
    t = torch.arange(num_samples) / SR
    phase = torch.zeros(batch, 1) if phase is None else phase
    return torch.sin(2 * math.pi * freq * t + phase)


def inputs_for(option: str, batch: int = 6) -> torch.Tensor:
    kind = option.split("/")[0]
    if kind == "text":
        return text_ids(batch)
    if kind == "audio":
        return torch.randn(batch, ARGS["audio"]["num_samples"]) * 0.3
    return tabular_rows(batch)


# ------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_vocabulary_order_and_ids():
    tok = Tokenizer("word", max_len=6).fit(["The dog, the cat.", "a bird", "THE cat"])
    # <pad>, <unk>, then by count (the 3, cat 2), ties alphabetically (, . a bird dog)
    assert tok.vocab == ["<pad>", "<unk>", "the", "cat", ",", ".", "a", "bird", "dog"]
    assert tok.vocab_size == 9
    assert tok.encode(["the zebra cat", "", "Bird!"]).tolist() == [
        [2, 1, 3, 0, 0, 0],  # unknown word -> 1, padding -> 0
        [0, 0, 0, 0, 0, 0],
        [7, 1, 0, 0, 0, 0],  # lower-cased; "!" never seen in training -> 1
    ]
    # the vocabulary depends on the texts, not on their order
    assert Tokenizer("word").fit(["THE cat", "a bird", "The dog, the cat."]).vocab == tok.vocab


def test_tokenizer_char_level_truncation_and_padding():
    tok = Tokenizer("char", max_len=4).fit(["abcab", "ba"])
    assert tok.vocab == ["<pad>", "<unk>", "a", "b", "c"]  # a and b 3 times: alphabetical
    ids = tok.encode(["abcabc", "ab", "z"])
    assert ids.dtype == torch.long and ids.shape == (3, 4)
    assert ids.tolist() == [[2, 3, 4, 2], [2, 3, 0, 0], [1, 0, 0, 0]]
    assert tok.decode(ids[1]) == "ab" and tok.decode(ids) == ["abca", "ab", "<unk>"]


def test_tokenizer_word_vs_char_level_lowercase_and_min_freq():
    text = "Hello, world! hello"
    word = Tokenizer("word", max_len=8).fit([text])
    assert word.tokenize(text) == ["hello", ",", "world", "!", "hello"]
    assert word.encode([text])[0, :5].tolist() == [2, 4, 5, 3, 2]  # hello (twice), then ! , world
    char = Tokenizer("char", max_len=32).fit([text])
    assert int((char.encode([text]) != 0).sum()) == len(text)
    assert "H" not in char.vocab and "h" in char.vocab
    cased = Tokenizer("char", lowercase=False).fit([text])
    assert "H" in cased.vocab and "h" in cased.vocab
    frequent = Tokenizer("word", min_freq=2).fit([text])
    assert frequent.vocab == ["<pad>", "<unk>", "hello"]
    assert frequent.encode(["hello world"])[0, :2].tolist() == [2, 1]


def test_tokenizer_state_round_trip_through_a_weights_only_checkpoint():
    texts = ["the quick brown fox", "jumps over", "the lazy dog!"]
    tok = Tokenizer("word", max_len=5, min_freq=1, lowercase=False).fit(texts)
    state = tok.state_dict()
    assert state == {"level": "word", "max_len": 5, "lowercase": False, "min_freq": 1, "vocab": tok.vocab}
    buffer = io.BytesIO()
    torch.save({"tokenizer": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["tokenizer"]
    probe = ["The lazy fox jumps over the dog", "unseen words only", ""]
    again = Tokenizer.from_state(loaded)
    assert again.vocab == tok.vocab and (again.level, again.max_len, again.lowercase) == ("word", 5, False)
    assert torch.equal(again.encode(probe), tok.encode(probe))
    other = Tokenizer("char", max_len=99)
    other.load_state_dict(loaded)
    assert torch.equal(other.encode(probe), tok.encode(probe))
    with pytest.raises(ValueError, match="not a Tokenizer state"):
        Tokenizer.from_state({"vocab": []})


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="before fit"):
        Tokenizer().encode(["hi"])
    with pytest.raises(ValueError, match="no texts"):
        Tokenizer().fit([])
    with pytest.raises(TypeError, match="single str"):
        Tokenizer().fit("a text")
    with pytest.raises(ValueError, match="level='bpe'"):
        Tokenizer("bpe")
    with pytest.raises(ValueError, match="max_len"):
        Tokenizer(max_len=0)


def test_tokenizer_encodes_ten_thousand_texts():
    # its speed is a benchmark's business, not an assertion here (a loaded CI machine made a 1 s bound flaky)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, 8, (7,), generator=g).tolist()) for _ in range(10_000)]
    for level in ("char", "word"):
        tok = Tokenizer(level, max_len=40).fit(texts[:1000])
        ids = tok.encode(texts)
        assert ids.shape == (10_000, 40)
        assert tok.decode(ids[5]) == (texts[5][:40] if level == "char" else texts[5])


# ------------------------------------------------------------------------------- every encoder, from YAML


@pytest.mark.parametrize("option", OPTIONS)
def test_config_builds_an_encoder_with_consistent_encode(option):
    raw = OmegaConf.to_container(OmegaConf.load(BACKBONES / f"{option}.yaml"))
    assert not set(raw) & {"vocab_size", "max_len", "sample_rate", "num_samples", "num_numeric", "cardinalities"}
    enc = make(option).eval()
    assert isinstance(enc, CLASSES[option]) and isinstance(enc, Encoder)
    x = inputs_for(option)
    with torch.no_grad():
        vector = enc(x)
        encoded = enc.encode(x)
    assert vector.shape == (6, enc.out_dim) and torch.isfinite(vector).all()
    torch.testing.assert_close(encoded.vector, vector)
    assert encoded.tokens.dim() == 3 and encoded.tokens.shape[0] == 6 and encoded.tokens.shape[2] == enc.token_dim
    assert torch.isfinite(encoded.tokens).all()
    if encoded.token_mask is not None:
        assert encoded.token_mask.dtype == torch.bool and encoded.token_mask.shape == encoded.tokens.shape[:2]


@pytest.mark.parametrize("option", OPTIONS)
def test_training_step_is_finite_under_bfloat16_autocast(option):
    enc = make(option).train()
    x = inputs_for(option)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = enc.encode(x)
        loss = encoded.vector.float().square().mean() + encoded.tokens.float().square().mean()
    loss.backward()
    assert torch.isfinite(encoded.vector.float()).all() and torch.isfinite(encoded.tokens.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("option", TEXT_OPTIONS)
def test_text_encoders_ignore_padding(option):
    enc = make(option).eval()
    ids = text_ids(length=12)
    longer = torch.cat([ids, torch.zeros(len(ids), 12, dtype=torch.long)], 1)  # 24 = max_len
    with torch.no_grad():
        short, long = enc.encode(ids), enc.encode(longer)
    torch.testing.assert_close(long.vector, short.vector, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.tokens[:, :12], short.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(short.token_mask, ids != 0) and not long.token_mask[:, 12:].any()
    assert (long.tokens[:, 12:] == 0).all() and (short.tokens[0] == 0).all()  # padding tokens are zeroed
    assert torch.isfinite(short.vector[0]).all()  # the empty text
    # a row's vector does not depend on the other rows of the batch (no leak through packing / masking)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids[3:4]), short.vector[3:4], atol=1e-5, rtol=1e-5)


def test_rnn_cells_and_directions():
    gru = make("text/gru")
    lstm = make("text/lstm", bidirectional=False, hidden=24)
    assert isinstance(gru, RNNText) and isinstance(gru.rnn, nn.GRU) and gru.token_dim == 2 * gru.rnn.hidden_size
    assert isinstance(lstm.rnn, nn.LSTM) and lstm.token_dim == 24
    assert gru.embed.padding_idx == 0
    assert make("text/transformer").encode(text_ids()).tokens.shape[1:] == (16, 64)


def test_transformer_rejects_sequences_longer_than_max_len():
    enc = make("text/transformer")
    with pytest.raises(ValueError, match="max_len=24"):
        enc(torch.ones(2, 25, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- audio


def test_spectrogram_shape_and_bins():
    x = torch.randn(3, 1000)
    mel = LogSpectrogram(SR, n_fft=256, hop_length=64, n_mels=32)
    assert mel(x).shape == (3, 1, 32, 1 + 1000 // 64)
    assert mel(x.unsqueeze(1)).shape == (3, 1, 32, 16)
    linear = LogSpectrogram(SR, n_fft=128, hop_length=32, n_mels=0)
    assert linear(x).shape == (3, 1, 65, 1 + 1000 // 32)
    out = mel(x)
    # per-sample normalisation: zero mean, unit variance, and blind to the gain
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(mel(5 * x), out, atol=1e-3, rtol=0)
    fb = mel_filterbank(SR, 256, 32)
    assert fb.shape == (129, 32) and (fb >= 0).all() and (fb <= 1).all() and (fb.amax(0) > 0).all()
    # derived constants stay out of checkpoints
    assert not any("window" in k or "mel_fb" in k for k in SpectrogramCNN(SR).state_dict())


@pytest.mark.parametrize("band", [3, 12, 25])
def test_pure_tone_peaks_in_its_mel_and_linear_bin(band):
    n_fft = 256
    fb = mel_filterbank(SR, n_fft, 32)
    centre = int(fb[:, band].argmax())  # the FFT bin at the top of the band's triangle
    freq = centre * SR / n_fft  # exactly on that bin
    x = tone(freq, batch=2, phase=torch.tensor([[0.0], [1.0]]))
    linear = LogSpectrogram(SR, n_fft, 64, n_mels=0)(x)[:, 0, :, 2:-2].mean(-1)  # inner frames: no edge effects
    assert linear.argmax(-1).tolist() == [centre, centre]
    mel = LogSpectrogram(SR, n_fft, 64, n_mels=32)(x)[:, 0, :, 2:-2].mean(-1)
    assert mel.argmax(-1).tolist() == [band, band]


@pytest.mark.parametrize("option", ["audio/conv1d", "audio/spectrogram"])
def test_audio_encoders_expose_the_stage_api(option):
    enc = make(option).eval()
    assert isinstance(enc, StagedEncoder) and enc.in_channels == 1
    channels = OmegaConf.load(BACKBONES / f"{option}.yaml").channels
    assert enc.stage_channels == tuple(channels) and len(enc.stages) == len(channels)
    x = torch.randn(2, 1024)
    with torch.no_grad():
        h = x
        for stage, c in zip(enc.stages, enc.stage_channels):
            h = stage(h)
            assert h.dim() == 4 and h.shape[:2] == (2, c)
        torch.testing.assert_close(enc.project(h), enc(x))
        torch.testing.assert_close(enc(x.unsqueeze(1)), enc(x))  # [B, 1, T] too
        tokens = enc.encode(x).tokens
    assert tokens.shape == (2, h.shape[2] * h.shape[3], enc.token_dim)
    if option == "audio/conv1d":
        assert h.shape[2] == 1 and enc.stages[0][1].kernel_size == (1, 9)


def test_audio_encoders_work_with_the_stage_wise_architectures():
    from mtlrun.models.arch.cross_stitch import CrossStitch
    from mtlrun.models.arch.mmoe import MMoE
    from mtlrun.models.arch.mtan import MTAN
    from mtlrun.tasks import Classification

    tasks = {"a": Classification(num_classes=3), "b": Classification(num_classes=2)}
    x = {"audio": torch.randn(4, 512)}
    for option in ("audio/conv1d", "audio/spectrogram"):
        for arch in (CrossStitch, MTAN, MMoE):
            model = arch(lambda option=option: make(option, channels=[4, 8]), tasks, "audio")
            preds = model(x)
            assert preds["a"].shape == (4, 3) and preds["b"].shape == (4, 2)


# ------------------------------------------------------------------------------------------------- tabular


def test_tabular_unknown_and_out_of_range_codes_map_to_zero():
    enc = make("tabular/mlp").eval()  # cardinalities [4, 2]
    rows = torch.tensor([[0.1, 0.2, 0.3, 0.0, 1.0],
                         [0.1, 0.2, 0.3, 4.0, 2.0],
                         [0.1, 0.2, 0.3, 5.0, 3.0],  # above the cardinality: unseen in training
                         [0.1, 0.2, 0.3, -1.0, float("nan")],
                         [0.1, 0.2, 0.3, 2.2, 0.9]])  # codes are rounded
    _, index = enc.split(rows)
    assert index.tolist() == [[0, 1], [4, 2], [0, 0], [0, 0], [2, 1]]
    with torch.no_grad():
        out = enc(rows)
        missing = enc(torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.0]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[2:3], missing)  # unseen categories read as missing
    torch.testing.assert_close(out[3:4], missing)
    assert not torch.allclose(out[0], out[1])  # a different category, a different output
    changed = rows[:1].clone()
    changed[0, 3] = 3.0
    with torch.no_grad():
        assert not torch.allclose(enc(changed), out[:1])


def test_tabular_feature_tokens():
    enc = make("tabular/mlp", embed_dim=5).eval()
    x = tabular_rows(4)
    encoded = enc.encode(x)
    assert encoded.tokens.shape == (4, 3 + 2, 5) and enc.token_dim == 5 and encoded.token_mask is None
    _, index = enc.split(x)
    torch.testing.assert_close(encoded.tokens[:, 1], x[:, 1:2] * enc.numeric_weight[1] + enc.token_bias[1])
    torch.testing.assert_close(encoded.tokens[:, 4], enc.embeddings[1](index[:, 1]) + enc.token_bias[4])


def test_tabular_only_numeric_or_only_categorical():
    numeric_only = TabularMLP(num_numeric=4, cardinalities=[], hidden=[8], out_dim=6)
    assert numeric_only(torch.randn(3, 4)).shape == (3, 6)
    assert numeric_only.encode(torch.randn(3, 4)).tokens.shape == (3, 4, 8)
    categorical_only = TabularMLP(num_numeric=0, cardinalities=[3, 3], hidden=[], out_dim=6)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert categorical_only(x).shape == (2, 6) and categorical_only.encode(x).tokens.shape == (2, 2, 8)
    with pytest.raises(UsageError, match="no feature"):
        TabularMLP(num_numeric=0, cardinalities=[])
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        numeric_only(torch.randn(3, 5))


# ------------------------------------------------------------------------------------ learning a tiny task


def _task(option: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary data each encoder should learn in a few steps."""
    y = torch.randint(0, 2, (n,), generator=g)
    kind = option.split("/")[0]
    if kind == "text":  # does the text contain word 2?
        ids = torch.randint(3, 30, (n, 16), generator=g)
        lengths = torch.randint(4, 17, (n,), generator=g)
        where = (torch.rand(n, generator=g) * lengths).long()
        ids[torch.arange(n), where] = torch.where(y == 1, 2, ids[torch.arange(n), where])
        ids[torch.arange(16) >= lengths[:, None]] = 0
        return ids, y
    if kind == "audio":  # a 400 Hz or a 1200 Hz tone, random phase and gain, in noise
        freq = torch.where(y == 1, 1200.0, 400.0)[:, None]
        t = torch.arange(512) / SR
        phase = torch.rand(n, 1, generator=g) * 2 * math.pi
        gain = 0.2 + torch.rand(n, 1, generator=g)
        return gain * torch.sin(2 * math.pi * freq * t + phase) + 0.1 * torch.randn(n, 512, generator=g), y
    x = tabular_rows(n)  # is the first categorical column 1 or 2 (vs 0, 3, 4)?
    x[:, 3] = torch.randint(0, 5, (n,), generator=g).float()
    return x, ((x[:, 3] == 1) | (x[:, 3] == 2)).long()


@pytest.mark.parametrize("option", OPTIONS)
def test_a_few_optimizer_steps_learn_a_tiny_task(option):
    g = torch.Generator().manual_seed(1)
    small = {"text/gru": {"hidden": 32}, "text/lstm": {"hidden": 32}, "text/transformer": {"dim": 32, "ff": 64},
             "audio/conv1d": {"channels": [8, 16]}, "audio/spectrogram": {"channels": [8, 16]},
             "tabular/mlp": {"hidden": [32]}, "text/hf": {}}[option]
    enc = make(option, **small, out_dim=32)
    head = nn.Linear(32, 2)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    (x, y), (x_test, y_test) = _task(option, 128, g), _task(option, 128, g)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    with torch.no_grad():  # and it generalises: held-out accuracy (about 0.97 to 1.0 in practice)
        accuracy = (head(enc.eval()(x_test)).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.85, accuracy


# ------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("option,overrides,key", [
    ("text/gru", {"cell": "rnn"}, "backbone.text.cell"),
    ("text/gru", {"hidden": 0}, "backbone.text.hidden"),
    ("text/lstm", {"dropout": 1.0}, "backbone.text.dropout"),
    ("text/transformer", {"heads": 5}, "backbone.text.heads"),
    ("audio/conv1d", {"channels": []}, "backbone.audio.channels"),
    ("audio/conv1d", {"kernel": 0}, "backbone.audio.kernel"),
    ("audio/spectrogram", {"n_mels": 200}, "backbone.audio.n_mels"),
    ("audio/spectrogram", {"hop_length": 0}, "backbone.audio.hop_length"),
    ("audio/spectrogram", {"n_fft": 4096}, "backbone.audio.n_fft"),  # longer than the 1024-sample clips
    ("tabular/mlp", {"hidden": [64, 0]}, "backbone.tabular.hidden"),
    ("tabular/mlp", {"embed_dim": 0}, "backbone.tabular.embed_dim"),
])
def test_bad_options_raise_a_usage_error_naming_the_key(option, overrides, key):
    node = OmegaConf.load(BACKBONES / f"{option}.yaml")
    node.merge_with(overrides)
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        instantiate_node(node, f"backbone.{option.split('/')[0]}", **ARGS[option.split("/")[0]])


def test_n_mels_error_says_what_is_valid():
    with pytest.raises(UsageError, match=r"in \[0, 129\]"):
        SpectrogramCNN(SR, n_fft=256, n_mels=130)
    assert SpectrogramCNN(SR, n_fft=256, n_mels=0).spectrogram.num_bins == 129
    with pytest.warns(UserWarning, match="stay empty"):
        SpectrogramCNN(44100, n_fft=256, n_mels=64)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("layers, bidirectional", [(1, True), (2, True), (2, False)])
def test_unpacked_rnn_equals_the_packed_one_at_the_real_positions(cell, layers, bidirectional):
    """RNNText's CUDA path (no host sync: packing needs the lengths on the host) gives the packed outputs and
    gradients at each text's real positions; an all-padding row (length 0) stays finite."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from mtlrun.models.backbone.text import _unpacked_rnn

    torch.manual_seed(0)
    rnn = cell(5, 7, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(5, 9, 5, requires_grad=True)
    lengths = torch.tensor([9, 3, 1, 6, 0])
    out, _ = rnn(pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False))
    packed, _ = pad_packed_sequence(out, batch_first=True, total_length=9)
    mine = _unpacked_rnn(rnn, x, lengths)
    mask = (torch.arange(9) < lengths[:, None]).unsqueeze(-1).float()
    assert mine.shape == packed.shape and torch.isfinite(mine).all()
    torch.testing.assert_close(mine * mask, packed * mask, atol=1e-6, rtol=1e-5)
    weights = torch.randn_like(packed)  # a loss that weighs every real position differently
    want = torch.autograd.grad((packed * mask * weights).sum(), [x, *rnn.parameters()])
    got = torch.autograd.grad((mine * mask * weights).sum(), [x, *rnn.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
