"""Spelling data: the DatasetDict contract, split disjointness, prompts, saving, tables, bad input."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from colab_helpers.spelling import data as sp
from colab_helpers.spelling.questions import TASKS

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def small(**changes: Any) -> sp.SpellingDataConfig:
    return sp.SpellingDataConfig(**{"train_size": 30, "validation_size": 10, "test_size": 20, **changes})


@pytest.fixture(scope="module")
def data() -> Any:
    return sp.build_datasets(None, small())


# --- the contract -----------------------------------------------------------------------------------------


def test_splits_columns_and_tasks(data: Any) -> None:
    assert list(data) == ["train", "validation", "test"]
    for split in data.values():
        assert list(split.column_names) == list(sp.COLUMNS)
    assert set(data["train"]["task"]) == {"spelling"}
    assert len(data["train"]) == 30
    for split, words in (("validation", 10), ("test", 20)):
        counts = Counter(data[split]["task"])
        assert counts == {"spelling": words, "position": words, "count": words}


def test_every_row_is_right(data: Any) -> None:
    for split in data.values():
        for row in split:
            word, answer = row["word"], row["answer"]
            assert row["prompt"] == f"Q: {row['question']}\nA:" and row["text"] == f"{row['prompt']} {answer}"
            if row["task"] == "spelling":
                assert answer.replace(" ", "").replace("-", "") == word and row["position"] is None
                assert row["letter"] is None
            elif row["task"] == "position":
                assert 1 <= row["position"] <= len(word) and answer == word[row["position"] - 1]
                assert row["letter"] is None
            else:
                assert row["position"] is None and answer == str(word.count(row["letter"]))


def test_no_word_in_two_splits(data: Any) -> None:
    words = {split: set(data[split]["word"]) for split in data}
    assert len(words["train"]) == 30 and len(words["validation"]) == 10 and len(words["test"]) == 20
    assert not words["train"] & words["validation"]
    assert not words["train"] & words["test"]
    assert not words["validation"] & words["test"]


def test_count_questions_cover_absent_single_and_repeated_letters() -> None:
    test = sp.build_datasets(None, small(test_size=60))["test"]
    answers = [int(r["answer"]) for r in test if r["task"] == "count"]
    assert {0, 1} <= set(answers) and any(a >= 2 for a in answers)


def test_train_tasks_can_be_widened_and_lengths_respected() -> None:
    data = sp.build_datasets(None, small(train_tasks=("spelling", "count"), min_length=5, max_length=6))
    assert set(data["train"]["task"]) == {"spelling", "count"}
    assert all(5 <= len(w) <= 6 for split in data.values() for w in split["word"])


def test_seeded() -> None:
    first, again, other = (sp.build_datasets(None, small(seed=s)) for s in (1, 1, 2))
    assert first["test"].to_list() == again["test"].to_list()
    assert first["test"]["word"] != other["test"]["word"]
    assert sp.fingerprint(first) == sp.fingerprint(again) != sp.fingerprint(other)


def test_explicit_split_words_are_kept() -> None:
    data = sp.build_datasets(None, small(), split_words={"test": ["apple", "banana"]})
    assert sorted(set(data["test"]["word"])) == ["apple", "banana"]
    assert "apple" not in data["train"]["word"] and "banana" not in data["validation"]["word"]


# --- prompts --------------------------------------------------------------------------------


def test_chat_template_used_when_the_tokenizer_has_one(tiny_gpt2: Any) -> None:
    _, tokenizer = tiny_gpt2
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    row = sp.build_datasets(chat_tokenizer, small())["train"][0]
    assert row["prompt"] == f"<|user|>{row['question']}<|end|>\n<|assistant|>"
    assert row["text"] == f"{row['prompt']}{row['answer']}<|end|>\n"
    plain = sp.build_datasets(chat_tokenizer, small(chat=False))["train"][0]
    assert plain["prompt"].startswith("Q: ")
    assert sp.build_datasets(tokenizer, small())["train"][0]["prompt"].startswith("Q: ")  # no template: plain
    with pytest.raises(ValueError, match="no chat_template"):
        sp.build_datasets(tokenizer, small(chat=True))


# --- saving ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "arrow"])
def test_save_and_reload(data: Any, tmp_path: Any, fmt: str) -> None:
    sp.save_datasets(data, tmp_path / fmt, format=fmt)
    again = sp.load_datasets(tmp_path / fmt)
    for split in data:
        assert again[split].to_list() == data[split].to_list()
        assert again[split].features == data[split].features
    with pytest.raises(FileNotFoundError, match="save_datasets"):
        sp.load_datasets(tmp_path / "nothing")


def test_tables(data: Any) -> None:
    table = sp.summary_table(data)
    assert table.loc["test", "count"] == 20 and table.loc["train", "position"] == 0
    shown = sp.examples(data, per_task=2)
    assert len(shown) == 6 and set(shown["task"]) == set(TASKS)


# --- bad input, each before any work -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"words": []}, "empty after filtering"),
        ({"words": ["apple", "pear", "plum"]}, "need 60"),
        ({"split_words": {"train": ["apple", "pear"], "test": ["pear"]}}, "overlap.*'train' and 'test'"),
        ({"split_words": {"tests": ["apple"]}}, "unknown split 'tests'"),
        ({"split_words": {"test": ["Apple"]}}, "lowercase"),
        ({"split_words": {"test": ["apple", ""]}}, r"split_words\['test'\]\[1\] is '', an empty word: .*drop it"),
        ({"train_tasks": ("speling",)}, "unknown task 'speling'.*did you mean 'spelling'"),
        ({"eval_tasks": ("spelling", "letters")}, "unknown task 'letters'"),
        ({"templates": {"spelling": ["spel"]}}, "unknown spelling template 'spel'"),
        ({"templates": {"colour": ["x"]}}, "unknown task 'colour'"),
        ({"min_length": 8, "max_length": 4}, "min_length"),
        ({"train_size": 0}, "train_size must be an integer >= 1"),
        ({"train_size": "10"}, "train_size must be an integer"),
        ({"max_tokens": 2}, "max_tokens needs the tokenizer"),
        ({"words": "apple pear"}, "list of words"),
        ({"trian_size": 3}, "unknown setting 'trian_size'"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict[str, Any], match: str) -> None:
    settings = {"train_size": 30, "validation_size": 10, "test_size": 20}
    settings.update({k: v for k, v in kwargs.items() if k not in ("words", "split_words")})
    extra = {k: v for k, v in kwargs.items() if k in ("words", "split_words")}
    with pytest.raises(ValueError, match=match):
        sp.build_datasets(None, **settings, **extra)
