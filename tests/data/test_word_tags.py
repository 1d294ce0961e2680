"""Tags per word from user files: data=table's `type: tags` target aligned with a word-level text input (mtlrun's
tokenizer, which splits punctuation off, and a transformers fast tokenizer's sub-words: the first token of a
word carries its tag), the count mismatch and unknown tag errors, and any cells (Hypothesis) read or give the
data error."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlrun.data.table import Table
from mtlrun.data.word_tags import word_starts, words_of_predictions
from mtlrun.errors import ConfigError, UsageError

ROWS = [("sentence", "ner", "split"),
        ("John lives in Paris", "B-PER O O B-LOC", "train"),
        ("the U.S. team wins", "O B-ORG O O", "train"),
        ("we go", "", "train"),  # no tags for this sentence: label_mask False
        ("Maria Lee visits Berlin", "B-PER I-PER O B-LOC", "val"),
        ("Tokyo sees Anna", "B-LOC O B-PER", "test")]


def write(tmp_path, rows=ROWS):
    path = tmp_path / "m.csv"
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return path


def table(path, text=None, targets=None):
    text = text or {"type": "text", "column": "sentence", "level": "word", "max_len": 6}
    return Table(path=str(path), inputs={"text": text}, targets=targets or {"ner": {"type": "tags", "column": "ner"}})


def test_tags_align_with_the_first_token_of_each_word(tmp_path):
    data = table(write(tmp_path))
    info = data.spec.targets["ner"]
    # the train split's tags, with the I- of each type (I-ORG and I-LOC are never in train)
    assert info.kind == "tagging" and info.labels == ("B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O")
    batch = data.dataset("train").__getitems__([0, 1, 2])
    b_loc, b_org, b_per, o = 0, 1, 2, 6
    assert batch["targets"]["ner"].tolist() == [
        [b_per, o, o, b_loc, -1, -1],
        [o, b_org, -1, -1, -1, o],  # "u . s ." is four tokens: the first carries B-ORG; "wins" is cut off (max_len 6)
        [-1] * 6]
    assert batch["label_mask"]["ner"].tolist() == [True, True, False]


def test_a_count_mismatch_names_the_row_and_both_counts(tmp_path):
    rows = [*ROWS[:2], ("the U.S. team wins", "O B-ORG O", "train"), *ROWS[3:]]
    with pytest.raises(UsageError, match=r"row 2 \(line 3\), column 'ner': 3 tags for the 4 words of column 'sentence'"):
        table(write(tmp_path, rows)).spec


def test_fewer_tags_than_the_words_that_fit_is_the_count_error_not_a_traceback(tmp_path):
    # all four words fit in max_len: the three tags used to reach the tensor and fail to broadcast there
    rows = [*ROWS[:2], ("John lives in Paris", "B-PER O O", "train"), *ROWS[3:]]
    with pytest.raises(UsageError, match=r"row 2 \(line 3\), column 'ner': 3 tags for the 4 words of column 'sentence'"):
        table(write(tmp_path, rows)).spec


def test_an_unknown_tag_and_a_char_level_text_are_refused(tmp_path):
    rows = [*ROWS[:5], ("Tokyo sees Anna", "B-LOC O B-MISC", "test")]
    with pytest.raises(UsageError, match=r"row 5 \(line 6\), column 'ner': tag 'B-MISC' is not among the train "
                                         r"split's 7 tags"):
        table(write(tmp_path, rows)).spec
    with pytest.raises(UsageError, match="need one word-level text input.*level=char"):
        table(write(tmp_path), text={"type": "text", "column": "sentence"}).spec


def test_sub_words_of_a_transformers_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "john", "lives", "in", "par", "##is", "."]))
    folder = tmp_path / "tok"
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # [CLS] john lives in par ##is [SEP]: Paris is two sub-words, its tag goes to "par"
    assert word_starts(tokenizer, ["John lives in Paris"], 16) == [[1, 2, 3, 4]]
    assert word_starts(tokenizer, ["John lives in Paris"], 5) == [[1, 2, 3]]  # truncated: Paris has no token
    data = table(write(tmp_path), text={"type": "text", "column": "sentence", "tokenizer": str(folder), "max_len": 8})
    target = data.dataset("train").__getitems__([0])["targets"]["ner"][0]
    assert target.tolist() == [-1, 2, 6, 6, 0, -1, -1, -1]
    predicted = torch.arange(8).unsqueeze(0)
    assert words_of_predictions(predicted, [[1, 2, 3, 4]]) == [[1, 2, 3, 4]]


def test_the_words_predictions_are_written_for(tmp_path):
    data = table(write(tmp_path))
    words, starts = data.tagged_words("train")
    assert words[1] == ["the", "U.S.", "team", "wins"] and starts[1] == [0, 1, 5]  # "wins" has no token left


# ------------------------------------------------------------------------------------ Hypothesis: any cells
TEXTS = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "a  b", "U.S. 's", "=1+1", "\r\n", "NA"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=8))
def test_any_text_and_tag_cells_read_or_give_the_data_error(tmp_path, rows):
    path = tmp_path / "h.jsonl"
    splits = ["train", "val", "test"]
    path.write_text("".join(json.dumps({"sentence": s, "ner": t, "split": splits[i % 3]}) + "\n"
                            for i, (s, t) in enumerate(rows)))
    try:
        data = table(path)
        data.build()
        data.tagged_words("test")
    except ConfigError:
        pass
