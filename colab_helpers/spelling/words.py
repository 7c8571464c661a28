"""The word list: the shipped words (``words.txt.gz``, lowercase words from Debian's ``wamerican``, SCOWL licence:
see ``WORDS.md``; everything works offline) and the words kept for a study, by letters, length and tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from ..evaluation.data import shipped_words  # the one reader of words.txt.gz (evaluation's tasks use it too)

logger = logging.getLogger(__name__)

_WORD = re.compile(r"^[a-z]+$")


def is_plain_word(word: str) -> bool:
    """True for a word of lowercase letters a-z only (at least one)."""
    return bool(_WORD.match(word))


def load_words(
    min_length: int = 3,
    max_length: int = 10,
    *,
    tokenizer: Any | None = None,
    max_tokens: int | None = None,
    words: Iterable[str] | None = None,
) -> list[str]:
    """Return the words (default: the shipped list) made of lowercase a-z only, of ``min_length``-``max_length``
    letters and, with ``tokenizer`` and ``max_tokens``, split into at most ``max_tokens`` tokens; sorted, unique.

    Words of other characters (capitals, apostrophes, digits) are dropped silently: filtering is the point.
    """
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs the tokenizer that counts the tokens: pass tokenizer=..., or max_tokens=None")
    source = shipped_words() if words is None else word_list(words, "words")
    kept = sorted({w for w in source if is_plain_word(w) and min_length <= len(w) <= max_length})
    if tokenizer is not None and max_tokens is not None and kept:
        counts = [len(ids) for ids in tokenizer(kept, add_special_tokens=False)["input_ids"]]
        kept = [w for w, n in zip(kept, counts, strict=True) if n <= max_tokens]
    logger.info("%d words of %d-%d letters kept%s", len(kept), min_length, max_length,
                f" (<= {max_tokens} tokens)" if max_tokens else "")  # fmt: skip
    return kept


def word_list(words: Any, what: str) -> list[str]:
    """Return ``words`` (an iterable of strings, not one string) as a list of stripped strings; ValueError naming
    ``what`` otherwise."""
    if isinstance(words, str) or not isinstance(words, Iterable):
        raise ValueError(f"{what} must be a list of words, got {words!r:.60}; e.g. {what}=['apple', 'river']")
    listed = list(words)
    bad = [w for w in listed if not isinstance(w, str)]
    if bad:
        raise ValueError(f"{what} must hold strings only, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [w.strip() for w in listed]
