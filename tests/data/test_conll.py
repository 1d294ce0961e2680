"""data=conll: a CoNLL-2003-format file the test writes reads back word for word and tag for tag (round trip), a
malformed line stops the run with exit 2 naming the file and line, and train -> predict works on it (predict
reads the checkpoint's data state: vocabulary and tag lists),
predictions.jsonl holding the file's words, a tag per word and the entity spans; any file (Hypothesis) reads or
gives the data error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import read_results, run_cli
from mtlrun.data.conll import CoNLL
from mtlrun.errors import UsageError

SENTENCES = [
    [("EU", "NNP", "B-NP", "B-ORG"), ("rejects", "VBZ", "B-VP", "O"), ("German", "JJ", "B-NP", "B-MISC"),
     ("call", "NN", "I-NP", "O"), ("to", "TO", "B-VP", "O"), ("boycott", "VB", "I-VP", "O"),
     ("British", "JJ", "B-NP", "B-MISC"), ("lamb", "NN", "I-NP", "O"), (".", ".", "O", "O")],
    [("Peter", "NNP", "B-NP", "B-PER"), ("Blackburn", "NNP", "I-NP", "I-PER")],
    [("The", "DT", "B-NP", "O"), ("U.S.", "NNP", "I-NP", "B-LOC"), ("team", "NN", "I-NP", "O"),
     ("won", "VBD", "B-VP", "O"), ("in", "IN", "B-PP", "O"), ("New", "NNP", "B-NP", "B-LOC"),
     ("York", "NNP", "I-NP", "I-LOC"), (".", ".", "O", "O")],
]


def write_conll(path, sentences=SENTENCES, repeat=1, broken_line=None):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(repeat):
        for sentence in sentences:
            lines += [" ".join(token) for token in sentence] + [""]
        lines += ["-DOCSTART- -X- -X- O", ""]
    if broken_line is not None:
        lines.insert(broken_line - 1, "Bonn NNP B-NP")  # three columns of four
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def files(tmp_path, **kw):
    return {split: write_conll(tmp_path / f"{split}.txt", **kw) for split in ("train", "val", "test")}


def test_a_conll_2003_file_reads_back_word_for_word_and_tag_for_tag(tmp_path):
    data = CoNLL(**files(tmp_path), max_len=16)
    spec = data.spec
    assert list(spec.targets) == ["pos", "chunk", "ner"]
    ner = spec.targets["ner"].labels  # the train file's tags, with the I- of each type (no I-ORG in the file)
    assert set(ner) == {"O", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-LOC", "I-LOC"}
    words, starts = data.tagged_words("test")
    assert words == [[t[0] for t in s] for s in SENTENCES]
    targets = data.dataset("test").tensors["targets"]
    for column, target in (("pos", 1), ("chunk", 2), ("ner", 3)):
        names = spec.targets[column].labels
        for row, sentence in enumerate(SENTENCES):
            read = [names[i] for i in targets[column][row, starts[row]].tolist()]
            assert read == [t[target] for t in sentence]
            others = set(range(16)) - set(starts[row])
            assert (targets[column][row, sorted(others)] == -1).all()  # "u . s ." : one tag, on "u"
    state = data.state_dict()
    again = CoNLL(**files(tmp_path), max_len=16)
    again.load_state_dict(state)
    assert again.spec == spec and CoNLL.state_problems(state, {"columns": ["word", "pos", "chunk", "ner"]}) == []


def test_malformed_lines_and_unknown_tags_name_file_and_line(tmp_path):
    paths = files(tmp_path)
    paths["val"] = write_conll(tmp_path / "bad.txt", broken_line=5)
    with pytest.raises(UsageError, match=r"bad.txt, line 5: 3 columns, expected 4"):
        CoNLL(**paths).spec
    paths["val"] = write_conll(tmp_path / "new.txt", sentences=[[("Bonn", "NNP", "B-NP", "B-CITY")]])
    with pytest.raises(UsageError, match=r"new.txt, line 3: tag 'B-CITY' of column 'ner' is not among"):
        CoNLL(**paths).spec
    with pytest.raises(UsageError, match="name exactly one column 'word'"):
        CoNLL(**paths, columns=["pos", "chunk", "ner", "x"])


@pytest.mark.e2e
def test_train_and_predict_on_conll_files(tmp_path):
    paths = files(tmp_path, repeat=4)
    data = [f"data.{split}={path}" for split, path in paths.items()]
    common = ["data=conll", "tasks=from_data", *data, "data.batch_size=4", "backbone.text.embed_dim=8",
              "backbone.text.hidden=8", "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.device=cpu"]
    run = tmp_path / "run"
    proc = run_cli("train", *common, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(read_results(run)) >= {"test/ner/f1", "test/ner/precision", "test/pos/macro_f1", "test/chunk/accuracy"}
    best = run / "checkpoints" / "best.pt"
    proc = run_cli("predict", f"checkpoint={best}", f"output={tmp_path / 'pred'}", f"hydra.run.dir={tmp_path / 'log'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 * len(SENTENCES)
    first = records[0]["ner"]
    assert first["words"] == [t[0] for t in SENTENCES[0]] and len(first["tags"]) == len(SENTENCES[0])
    assert "entities" in first and "entities" not in records[0]["pos"]  # POS tags are no BIO scheme

    broken = {**paths, "val": write_conll(tmp_path / "bad.txt", broken_line=7)}
    proc = run_cli("train", *[a for a in common if not a.startswith("data.val=")], f"data.val={broken['val']}",
                   f"hydra.run.dir={tmp_path / 'broken'}", cwd=tmp_path)
    assert proc.returncode == 2 and "bad.txt, line 7: 3 columns, expected 4" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ Hypothesis: any file
LINES = st.one_of(st.text(max_size=30), st.sampled_from(["", "-DOCSTART- -X- -X- O", "a b c d", "a b c", "\t\t",
                                                         "x NN B-NP B-PER", "x NN I-NP I-PER", "\x00 a b c"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, max_size=12), raw=st.binary(max_size=60))
def test_any_file_reads_or_gives_the_data_error(tmp_path, lines, raw):
    paths = files(tmp_path)
    (tmp_path / "any.txt").write_text("\n".join(lines))
    (tmp_path / "raw.txt").write_bytes(raw)
    for path in (tmp_path / "any.txt", tmp_path / "raw.txt"):
        try:
            data = CoNLL(**{**paths, "val": str(path)})
            data.build()
            data.tagged_words("val")
        except UsageError:
            pass
