"""The Tagging task (one label per token) on a text encoder's token sequence: its loss (padding, ignored
tokens and unlabelled sentences never count), the model contract with the tokens as the shared
representation, every text backbone, and one training step with every weighting at each `grad_on`, with
accumulation, bf16 autocast and partial labels (data=text_tagging, tiny)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from contracts import check_gradient_factorizes, check_parameter_partition, compose_config, step_without_batchnorm
from mtlrun.build import build_components
from mtlrun.config import config_dir
from mtlrun.errors import UsageError
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.models.backbone.text import RNNText, TransformerText
from mtlrun.models.heads import make_token_heads
from mtlrun.tasks import Classification, Tagging

pytestmark = [pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning")]

# one batch of 32 sentences: step_without_batchnorm's step spans the epoch, one micro-batch here
TINY = ["experiment=text_tagging", "data.n_train=32", "data.n_val=8", "data.n_test=8", "data.batch_size=32",
        "optim=sgd", "optim.momentum=0",
        "optim.nesterov=false", "optim.weight_decay=0", "scheduler=constant", "trainer.device=cpu",
        "trainer.max_epochs=1", "trainer.progress_bar=false"]
SMALL_GRU = ["backbone.text.embed_dim=8", "backbone.text.hidden=8"]
SOLVERS = {"upgrad": ("qpsolvers", "quadprog"), "nash_mtl": ("cvxpy", "ecos"), "cagrad": ("scipy",),
           "fairgrad": ("scipy",)}


def tasks():
    out = {"pos": Tagging(num_tags=4), "ner": Tagging(num_tags=3), "topic": Classification(num_classes=2)}
    for name, task in out.items():
        task.name = name
    return out


def batch(vocab=20, length=7, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 1, 5, 2])[:n]
    ids = torch.randint(2, vocab, (n, length), generator=g)
    real = torch.arange(length) < lengths[:, None]
    ids = torch.where(real, ids, 0)
    targets = {t: torch.where(real, torch.randint(k, (n, length), generator=g), -1) for t, k in (("pos", 4), ("ner", 3))}
    targets["topic"] = torch.randint(2, (n,), generator=g)
    return {"inputs": {"text": ids}, "targets": targets}


def test_loss_counts_only_tagged_tokens_of_labelled_sentences():
    task = Tagging(num_tags=3)
    target = torch.tensor([[0, 2, -1, -1], [1, -1, 1, -1]])  # -1: padding or a later sub-word
    pred = torch.randn(2, 4, 3, requires_grad=True)
    loss = task.loss(pred, target, None)
    expected = torch.nn.functional.cross_entropy(pred[target != -1], target[target != -1])
    torch.testing.assert_close(loss, expected)
    noisy = pred.detach().clone()
    noisy[target == -1] = float("nan")  # whatever is predicted at an ignored token changes nothing
    assert torch.isfinite(task.loss(noisy, target, None))
    mask = torch.tensor([False, True])  # the first sentence has no tags for this task
    torch.testing.assert_close(task.loss(pred, target, mask),
                               torch.nn.functional.cross_entropy(pred[1][target[1] != -1], target[1][target[1] != -1]))
    nothing = task.loss(pred, target, torch.tensor([False, False]))
    nothing.backward()
    assert nothing.item() == 0 and not pred.grad.any()


@pytest.mark.parametrize("make", [lambda: RNNText(20, 12, cell="gru", embed_dim=8, hidden=8),
                                  lambda: RNNText(20, 12, cell="lstm", embed_dim=8, hidden=8, layers=2),
                                  lambda: TransformerText(20, 12, dim=8, heads=2, layers=1, ff=16)],
                         ids=["gru", "lstm", "transformer"])
def test_hps_shares_the_token_sequence_and_padding_changes_nothing(make):
    torch.manual_seed(0)
    model = HardParameterSharing(make, tasks(), "text").eval()
    b = batch()
    preds, shared = model(b["inputs"], return_shared=True)
    assert shared.shape == (5, 7, model.encoder.token_dim)
    assert preds["pos"].shape == (5, 7, 4) and preds["ner"].shape == (5, 7, 3) and preds["topic"].shape == (5, 2)
    longer = {"text": torch.cat([b["inputs"]["text"], torch.zeros(5, 4, dtype=torch.long)], 1)}
    again = model(longer)
    real = b["inputs"]["text"] != 0
    torch.testing.assert_close(again["pos"][:, :7][real], preds["pos"][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again["topic"], preds["topic"], atol=1e-5, rtol=1e-5)
    model.train()
    check_parameter_partition(model, tasks(), b)
    check_gradient_factorizes(model, tasks(), b)


def test_hf_encoder_gives_tokens_too():
    pytest.importorskip("transformers")
    from mtlrun.models.backbone.hf_text import HFText

    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 16}
    model = HardParameterSharing(lambda: HFText(20, 12, pretrained=False, config=config), tasks(), "text")
    preds, shared = model(batch()["inputs"], return_shared=True)
    assert shared.shape == (5, 7, 8) and preds["ner"].shape == (5, 7, 3)
    # (not check_gradient_factorizes: BERT's own pooler is a parameter nothing here reads, as for sentence tasks)
    sum(t.loss(preds[n], batch()["targets"][n], None) for n, t in tasks().items()).backward()
    assert model.encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_token_level_tasks_are_refused_where_no_tokens_are_shared():
    with pytest.raises(UsageError, match="needs arch=hps"):
        compose_and_build(["arch=soft"])
    with pytest.raises(UsageError, match="outputs one vector per token"):
        make_token_heads(tasks(), torch.nn.Linear(3, 3))


def compose_and_build(overrides):
    return build_components(compose_config([*TINY, *overrides]))


def weighting_cases():
    for path in sorted((config_dir() / "weighting").glob("*.yaml")):
        grad_on = OmegaConf.load(path).get("grad_on")
        for level in ((None,) if grad_on is None else ("parameters", "representation")):
            yield path.stem, level


@pytest.mark.parametrize("method, grad_on", list(weighting_cases()))
def test_one_step_with_every_weighting(tmp_path, method, grad_on):
    for package in SOLVERS.get(method, ()):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"weighting={method} needs {package}")
    overrides = [*TINY, *SMALL_GRU, f"weighting={method}"] + ([f"weighting.grad_on={grad_on}"] if grad_on else [])
    update, _, trainer = step_without_batchnorm(compose_config(overrides), tmp_path)
    assert trainer.global_step == 1 and torch.isfinite(update).all() and update.abs().max() > 0


@pytest.mark.parametrize("extra", [[*SMALL_GRU, "data.batch_size=32", "trainer.accumulate=2", "weighting=upgrad",
                                    "weighting.grad_on=representation"],
                                   [*SMALL_GRU, "trainer.precision=bf16", "weighting=mgda", "weighting.grad_on=parameters"],
                                   ["data.label_fraction.ner=0.5", "data.label_fraction.topic=0.25", "backbone/text=transformer",
                                    "backbone.text.dim=8", "backbone.text.heads=2", "backbone.text.ff=16"]],
                         ids=["accumulate", "bf16", "partial-labels"])
def test_accumulation_autocast_and_partial_labels(tmp_path, extra):
    if "weighting=upgrad" in extra and importlib.util.find_spec("qpsolvers") is None:
        pytest.skip("weighting=upgrad needs qpsolvers")
    update, _, trainer = step_without_batchnorm(compose_config([*TINY, "data.n_train=64", *extra]), tmp_path)
    assert torch.isfinite(update).all() and update.abs().max() > 0
    values = trainer.train_sums.means()
    assert all(torch.isfinite(torch.tensor(values[f"{t}/loss"])) for t in ("pos", "chunk", "ner", "topic"))


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, crf):
    """Between two log steps, Trainer.step on a tagging model (its loss, the CRF's NLL, the backward, the weighting
    and the optimizer) makes no call that would make a GPU wait for the host: decoding waits for evaluation."""
    from contracts import NoHostSync
    from mtlrun.build import build_trainer
    from mtlrun.data.loading import to_device
    from mtlrun.distributed import DistInfo

    # the transformer encoder: the GRU packs its texts on a CPU (lengths on the host, no sync there) and runs
    # unpacked on a GPU, a path tests/models/test_encoders.py checks against the packed one
    cfg = compose_config([*TINY, "backbone/text=transformer", "backbone.text.dim=8", "backbone.text.heads=2",
                          "backbone.text.ff=16", "trainer.log_every_n_steps=1000",
                          f"tasks.ner.crf={str(crf).lower()}", "data.batch_size=8"])
    trainer = build_trainer(cfg, str(tmp_path), dist=DistInfo())
    loader = trainer.data.train_loader(epoch=0, seed=0, device=trainer.device)
    first, second = (to_device(b, trainer.device) for b, _ in zip(loader, range(2)))
    trainer.step([first])  # the first step: lazy state (optimizer moments)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with NoHostSync():
        trainer.step([second])
    assert trainer.global_step == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
