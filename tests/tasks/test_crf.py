"""The linear-chain CRF of `Tagging(crf=true)` (mtlrun/crf.py) against a brute-force enumeration of every tag
path on tiny inputs: the log-partition, the NLL with untagged (latent) tokens and padding, Viterbi's path; and
the CRF task trained, measured, predicted and exported end to end."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from contracts import check_gradient_factorizes, compose_config, run_cli, step_without_batchnorm
from mtlrun.crf import chain_potentials, negative_log_likelihood, viterbi
from mtlrun.engine.evaluate import evaluate_split
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.models.backbone.text import RNNText
from mtlrun.tasks import Tagging

C, L = 3, 5


def random_chain(seed: int):
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(4, L, C, generator=g, dtype=torch.float64)
    transitions, start, end = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((C, C), (C,), (C,)))
    lengths = torch.tensor([5, 3, 1, 0])  # the last: an empty text
    mask = torch.arange(L) < lengths[:, None]
    target = torch.randint(C, (4, L), generator=g)
    target = torch.where(torch.rand(4, L, generator=g) < 0.3, -1, target)  # some tokens untagged (sub-words)
    target = torch.where(mask, target, -1)
    return emissions, transitions, start, end, mask, target


def brute_force(emissions, transitions, start, end, n, target):
    """(log Z, log Z over the paths agreeing with the tags, best path) of one sentence of n >= 1 tokens."""
    scores, agreeing, best = [], [], None
    for path in itertools.product(range(C), repeat=n):
        s = start[path[0]] + end[path[-1]] + sum(emissions[i, y] for i, y in enumerate(path))
        s = s + sum(transitions[a, b] for a, b in zip(path, path[1:]))
        scores.append(float(s))
        if all(t == -1 or t == y for t, y in zip(target[:n].tolist(), path)):
            agreeing.append(float(s))
        if best is None or s > best[0]:
            best = (s, path)
    lse = lambda xs: max(xs) + math.log(sum(math.exp(x - max(xs)) for x in xs))  # noqa: E731
    return lse(scores), lse(agreeing), list(best[1])


@pytest.mark.parametrize("seed", range(6))
def test_nll_and_viterbi_match_brute_force(seed):
    emissions, transitions, start, end, mask, target = random_chain(seed)
    potentials = chain_potentials(emissions, transitions, start, end, mask).double()
    nll = negative_log_likelihood(potentials, target)
    paths = viterbi(potentials)
    for row in range(4):
        n = max(1, int(mask[row].sum()))  # an empty text is a chain of one latent token
        log_z, log_z_gold, best = brute_force(emissions[row], transitions, start, end, n, target[row])
        expected = log_z - log_z_gold if (target[row] != -1).any() else 0.0
        assert float(nll[row]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert paths[row, :n].tolist() == best
    assert nll[3] == 0 and nll[2] >= 0  # no tag at all: exactly 0


def test_padding_changes_nothing_and_gradients_are_finite():
    emissions, transitions, start, end, mask, target = random_chain(0)
    emissions.requires_grad_(True)
    wide = lambda x, fill: torch.cat([x, torch.full((4, 3, *x.shape[2:]), fill, dtype=x.dtype)], 1)  # noqa: E731
    short = negative_log_likelihood(chain_potentials(emissions, transitions, start, end, mask), target)
    longer = negative_log_likelihood(chain_potentials(wide(emissions, 7.0), transitions, start, end,
                                                      wide(mask, False)), wide(target, -1))
    torch.testing.assert_close(short, longer)
    longer.sum().backward()
    assert torch.isfinite(emissions.grad).all()
    assert (emissions.grad[~mask] == 0).all()  # padding positions get no gradient


def test_crf_task_in_the_model_and_its_metrics():
    torch.manual_seed(0)
    tasks = {"ner": Tagging(num_tags=C, crf=True), "pos": Tagging(num_tags=4)}
    for name, task in tasks.items():
        task.name = name
    model = HardParameterSharing(lambda: RNNText(20, L, embed_dim=8, hidden=8), tasks, "text")
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
    batch = {"inputs": {"text": ids},
             "targets": {"ner": torch.tensor([[0, 2, -1, -1, -1], [1, -1, 2, 0, 0]]),
                         "pos": torch.tensor([[0, 1, 2, -1, -1], [3, 3, 3, 3, 3]])}}
    preds = model(batch["inputs"])
    assert preds["ner"].shape == (2, L, C, C) and preds["pos"].shape == (2, L, 4)
    assert tasks["ner"].decode(preds["ner"]).shape == (2, L)
    check_gradient_factorizes(model, tasks, batch)
    values = evaluate_split(model, tasks, [batch], device=torch.device("cpu"), warn=False)
    assert 0 <= values["ner/accuracy"] <= 1 and math.isfinite(values["ner/loss"])


@pytest.mark.parametrize("extra", [["weighting=static", "trainer.precision=bf16"],
                                   ["weighting=mgda", "weighting.grad_on=representation"],
                                   ["weighting=mgda", "weighting.grad_on=parameters", "data.label_fraction.ner=0.5"]])
def test_one_training_step_with_a_crf(tmp_path, extra):
    overrides = ["experiment=text_tagging", "data.n_train=32", "data.n_val=8", "data.n_test=8", "data.batch_size=32",
                 "backbone.text.embed_dim=8", "backbone.text.hidden=8", "tasks.ner.crf=true",
                 "trainer.device=cpu", "trainer.progress_bar=false", *extra]
    update, _, trainer = step_without_batchnorm(compose_config(overrides), tmp_path)
    assert torch.isfinite(update).all() and update.abs().max() > 0
    assert trainer.model.heads["ner"].transitions.shape == (7, 7)


@pytest.mark.e2e
def test_a_crf_model_trains_predicts_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    proc = run_cli("train", "experiment=text_tagging", "data.n_train=32", "data.n_val=8", "data.n_test=8",
                   "data.batch_size=16", "backbone.text.embed_dim=8", "backbone.text.hidden=8", "tasks.ner.crf=true",
                   "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false", f"hydra.run.dir={run}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = str(run / "checkpoints" / "best.pt")
    proc = run_cli("predict", f"checkpoint={best}", f"output={tmp_path / 'pred'}", f"hydra.run.dir={tmp_path / 'l1'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()[0])
    assert len(record["ner"]["tags"]) == len(record["ner"]["words"]) and "entities" in record["ner"]
    for fmt in ("pt2", "torchscript", "onnx"):
        proc = run_cli("export", f"checkpoint={best}", f"format={fmt}", f"output={tmp_path / fmt}",
                       f"hydra.run.dir={tmp_path / ('log_' + fmt)}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
