"""The spelling tasks' questions: ordinals, every template, rows, and words a row cannot be made of."""

from __future__ import annotations

from typing import Any

import pytest

from colab_helpers.spelling import questions as sp


@pytest.mark.parametrize(
    ("n", "suffixed", "word"),
    [(1, "1st", "first"), (2, "2nd", "second"), (3, "3rd", "third"), (4, "4th", "fourth"), (11, "11th", "eleventh"),
     (12, "12th", "twelfth"), (13, "13th", "thirteenth"), (20, "20th", "twentieth"), (21, "21st", "twenty-first"),
     (22, "22nd", "twenty-second"), (33, "33rd", "thirty-third"), (40, "40th", "fortieth")],
)  # fmt: skip
def test_ordinals(n: int, suffixed: str, word: str) -> None:
    assert sp.ordinal(n) == suffixed and sp.ordinal_word(n) == word
    assert sp.ordinal(111) == "111th" and sp.ordinal(101) == "101st"


def test_every_template_renders_and_answers_match() -> None:
    for task, templates in sp.TEMPLATES.items():
        for name in templates:
            rows = sp.make_rows(["apple", "banana"], [task], templates={task: [name]}, seed=3)
            assert {r["template"] for r in rows} == {name}
            for row in rows:
                assert row["word"] in row["question"] and "{" not in row["question"]
    hyphens = sp.make_rows(["apple"], ["spelling"], templates={"spelling": ["hyphens"]})
    assert hyphens[0]["answer"] == "a-p-p-l-e"
    ordinal = sp.make_rows(["apple"] * 20, ["position"], templates={"position": ["ordinal"]})
    assert any("3rd letter of 'apple'" in r["question"] and r["answer"] == "p" for r in ordinal)


@pytest.mark.parametrize(
    ("words", "match"),
    [
        ([""], r"words\[0\] is '', an empty word: every word needs at least one letter to ask about; drop it"),
        (["apple", "pear", "  "], r"words\[2\] is '  ', an empty word: .*drop it"),
        (["apple", 3], r"words\[1\] must be a string, got 3 \(int\)"),
        ("apple", r"words must be a list of words, got 'apple'; e.g. words=\['apple', 'river'\]"),
    ],
)
def test_make_rows_refuses_an_empty_word_naming_its_position(words: Any, match: str) -> None:
    """An empty word failed inside ``random`` (a position drawn from an empty range); now its position is named."""
    with pytest.raises(ValueError, match=match):
        sp.make_rows(words, sp.TASKS, seed=0)
