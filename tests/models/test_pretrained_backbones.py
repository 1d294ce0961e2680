"""The optional pretrained backbones, `backbone/image=timm` (and timm_dense) and `backbone/text=hf`: weights from the
local disk only (a file, or the Hugging Face hub cache), a fast UsageError that says where to put them when they
are missing, never a download. Their contract with every arch / the text encoders' checks run in
test_sharing.py, test_dense_models.py and test_encoders.py."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

from mtlrun.errors import UsageError

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64}


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face cache (and torch cache): nothing pretrained is on this disk."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "hf" / "hub"


# -------------------------------------------------------------------------------------------------- timm


def test_timm_stages_are_the_feature_maps_of_timm_features_only():
    timm = pytest.importorskip("timm")
    from mtlrun.models.backbone.timm_image import TimmImage

    torch.manual_seed(0)
    enc = TimmImage(in_channels=1, input_size=(32, 32), name="resnet18", out_dim=16).eval()
    reference = timm.create_model("resnet18", features_only=True, in_chans=1)
    reference.load_state_dict({k.split(".", 1)[1]: v for k, v in enc.stages.state_dict().items()})
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        features, h = reference.eval()(x), x
        for stage, expected in zip(enc.stages, features):
            h = stage(h)
            torch.testing.assert_close(h, expected, rtol=0, atol=0)
        assert enc(x).shape == (2, 16)
    assert enc.stage_channels == tuple(reference.feature_info.channels()) == (64, 64, 128, 256, 512)
    assert enc.stages[0].conv1.in_channels == 1


def test_timm_model_without_sequential_features_is_one_stage():
    pytest.importorskip("timm")
    from mtlrun.models.backbone.timm_image import TimmImage

    enc = TimmImage(in_channels=3, input_size=(32, 32), name="efficientnet_b0")
    assert len(enc.stages) == 1 and enc.stage_channels == (320,)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 320)


def test_timm_unknown_name_suggests_close_ones():
    pytest.importorskip("timm")
    from mtlrun.models.backbone.timm_image import TimmImage

    with pytest.raises(UsageError, match=r"backbone\.image\.name=resnet81: timm has no such model; close: .*resnet18"):
        TimmImage(in_channels=3, input_size=(32, 32), name="resnet81")


def test_timm_pretrained_without_cached_weights_fails_fast_saying_where_to_put_them(empty_hf_home):
    pytest.importorskip("timm")
    from mtlrun.models.backbone.timm_image import TimmImage

    with pytest.raises(UsageError) as info:
        TimmImage(in_channels=3, input_size=(32, 32), name="resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18" in message and "never downloads" in message
    assert str(empty_hf_home / "models--timm--resnet18.a1_in1k") in message
    assert "backbone.image.checkpoint_path=" in message
    assert not any(empty_hf_home.parent.rglob("*.safetensors"))  # nothing was fetched


def test_timm_pretrained_loads_a_checkpoint_file_and_the_hub_cache(empty_hf_home, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from mtlrun.models.backbone.timm_image import TimmImage

    torch.manual_seed(1)
    source = timm.create_model("resnet18").state_dict()  # random: stands in for trained weights
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    enc = TimmImage(in_channels=3, input_size=(32, 32), name="resnet18", pretrained=True, checkpoint_path=str(path))
    assert torch.equal(enc.stages[1].layer1[0].conv1.weight, source["layer1.0.conv1.weight"])
    assert torch.equal(enc.stages[0].conv1.weight, source["conv1.weight"])
    # the same file laid out as the hub cache keeps it (what `huggingface-cli download` leaves behind)
    repo = empty_hf_home / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(path.read_bytes())
    gray = TimmImage(in_channels=1, input_size=(32, 32), name="resnet18", pretrained=True)
    assert torch.equal(gray.stages[4].layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    # timm adapts the RGB stem to one channel by summing its filters
    torch.testing.assert_close(gray.stages[0].conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    with pytest.raises(UsageError, match=r"checkpoint_path=.*only read with backbone\.image\.pretrained=true"):
        TimmImage(in_channels=3, input_size=(32, 32), name="resnet18", checkpoint_path=str(path))
    with pytest.raises(UsageError, match="no such file"):
        TimmImage(in_channels=3, input_size=(32, 32), pretrained=True, checkpoint_path=str(tmp_path / "nope.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(UsageError, match="cannot load"):
        TimmImage(in_channels=3, input_size=(32, 32), pretrained=True, checkpoint_path=str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------------------------------- transformers


def test_hf_pretrained_without_cache_fails_fast_naming_model_and_cache_dir(empty_hf_home):
    pytest.importorskip("transformers")
    from mtlrun.models.backbone.hf_text import HFText

    with pytest.raises(UsageError) as info:
        HFText(vocab_size=30, max_len=16, name="bert-base-uncased", pretrained=True)
    message = str(info.value)
    assert "bert-base-uncased" in message and str(empty_hf_home / "models--bert-base-uncased") in message
    assert "pretrained=false" in message and "never downloads" in message


def test_hf_pretrained_keeps_the_layers_and_learns_embeddings_for_the_data_vocabulary(tmp_path):
    transformers = pytest.importorskip("transformers")
    from mtlrun.models.backbone.hf_text import HFText

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**TINY_BERT, vocab_size=100)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "tiny-bert")
    saved = transformers.AutoModel.from_pretrained(tmp_path / "tiny-bert").state_dict()
    enc = HFText(vocab_size=30, max_len=16, name=str(tmp_path / "tiny-bert"), pretrained=True, out_dim=8)
    state = enc.model.state_dict()
    layer = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(state[layer], saved[layer])
    assert state["embeddings.word_embeddings.weight"].shape == (30, 32)  # the data's vocabulary
    assert not state["embeddings.word_embeddings.weight"][0].any()  # padding
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        encoded = enc.encode(ids)
    assert encoded.vector.shape == (2, 8) and torch.isfinite(encoded.vector).all()
    assert torch.equal(encoded.token_mask, ids != 0)


@pytest.mark.parametrize("module,extra", [("timm", "timm"), ("transformers", "hf")])
def test_a_missing_extra_names_the_pip_command(monkeypatch, module, extra):
    from mtlrun.checks import import_extra

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(UsageError, match=rf'pip install "mtlrun\[{extra}\]"'):
        import_extra(module, extra, "feature")


def test_shipped_configs_point_at_the_classes():
    from omegaconf import OmegaConf

    from mtlrun.config import config_dir

    backbone = Path(config_dir()) / "backbone"
    assert OmegaConf.load(backbone / "image" / "timm.yaml")._target_.endswith("timm_image.TimmImage")
    assert OmegaConf.load(backbone / "image" / "timm_dense.yaml")._target_.endswith("timm_image.TimmDense")
    assert OmegaConf.load(backbone / "text" / "hf.yaml")._target_.endswith("hf_text.HFText")


def test_a_table_text_column_tokenized_by_the_models_own_tokenizer_keeps_its_embeddings(tmp_path):
    transformers = pytest.importorskip("transformers")
    from mtlrun.data.table import Table
    from mtlrun.models.backbone.hf_text import HFText

    # a tiny BERT whose tokenizer pads with id 3 (not 0): mtlrun stores padding as 0 and the encoder swaps back
    vocab = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "the", "cat", "sat", "dog", "ran"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    folder = tmp_path / "tiny-bert"
    if "vocab" in inspect.signature(transformers.BertTokenizerFast.__init__).parameters:  # transformers >= 5
        tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    else:
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**TINY_BERT, vocab_size=len(vocab), pad_token_id=3)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    rows = ["train,the cat sat,0", "train,the dog ran,1", "train,cat,0", "val,dog sat,1", "test,the the,0"]
    (tmp_path / "m.csv").write_text("split,text,y\n" + "\n".join(rows) + "\n")
    data = Table(path=str(tmp_path / "m.csv"),
                 inputs={"text": {"type": "text", "column": "text", "max_len": 6, "tokenizer": str(folder)}},
                 targets={"y": {"type": "classification", "column": "y"}})
    assert data.spec.modalities["text"].args == {"vocab_size": len(vocab), "max_len": 6}
    ids = data.dataset("train").__getitems__([0, 2])["inputs"]["text"]
    # [CLS] the cat sat [SEP] then padding (stored as 0; the tokenizer's [UNK] id 0 is stored as 3)
    assert ids.tolist() == [[1, 5, 6, 7, 2, 0], [1, 6, 2, 0, 0, 0]]
    assert data.state_dict()["tokenizers"]["text"] == {"hf_tokenizer": str(folder), "max_len": 6,
                                                       "vocab_size": len(vocab)}

    enc = HFText(vocab_size=len(vocab), max_len=6, name=str(folder), pretrained=True, tokenizer="model").eval()
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    assert torch.equal(enc.model.get_input_embeddings().weight, reference.get_input_embeddings().weight)
    real = tokenizer(["the cat sat", "cat"], padding="max_length", max_length=6, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**real).last_hidden_state
        encoded = enc.encode(ids)
    mask = real["attention_mask"].bool()
    torch.testing.assert_close(encoded.tokens[mask], expected[mask], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match=r"tokenizer=model: the text data has 99 ids"):
        HFText(vocab_size=99, max_len=6, name=str(folder), pretrained=True, tokenizer="model")
