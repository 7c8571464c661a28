"""The spelling study's word list: the shipped words and their licence, filtering by letters, length and tokens."""

from __future__ import annotations

import gzip
from importlib import resources
from typing import Any

from colab_helpers.spelling import words as sp


def test_shipped_word_list_is_small_lowercase_and_licensed() -> None:
    resource = resources.files("colab_helpers.spelling").joinpath("words.txt.gz")
    assert len(resource.read_bytes()) < 300 * 1024
    words = sp.shipped_words()
    assert len(words) > 50_000 and words == sorted(set(words))
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)
    licence = resources.files("colab_helpers.spelling").joinpath("WORDS.md").read_text(encoding="utf-8")
    assert "SCOWL" in licence and "Kevin Atkinson" in licence and "wamerican" in licence
    with gzip.open(resource.open("rb"), "rt") as handle:  # a plain gzip file, readable without our code
        assert handle.readline().strip() == words[0]


def test_load_words_filters_length_letters_and_tokens(tiny_gpt2: Any) -> None:
    words = sp.load_words(4, 6)
    assert words and all(4 <= len(w) <= 6 for w in words)
    assert sp.load_words(3, 5, words=["Apple", "it's", "cat", "river", "rivers", "x1y", "dog"]) == ["cat", "dog", "river"]
    _, tokenizer = tiny_gpt2
    few = sp.load_words(3, 8, tokenizer=tokenizer, max_tokens=2, words=["the", "quick", "zyzzyva", "fox"])
    assert "zyzzyva" not in few and all(len(tokenizer(w, add_special_tokens=False)["input_ids"]) <= 2 for w in few)
