"""Answers of the spelling tasks made comparable: :func:`normalize_answer` and exact match (:func:`is_correct`).

The same normalisation applies to a prediction and to its reference, so "A-P-P-L-E", "The 3rd letter is 'p'."
or "twice" match "a p p l e", "p" and "2".
"""

from __future__ import annotations

import re

from .questions import TASKS

_QUOTES = "'\"`\u2018\u2019\u201c\u201d\u00ab\u00bb"
_NUMBER_WORDS = {
    "zero": 0, "none": 0, "never": 0, "one": 1, "once": 1, "two": 2, "twice": 2, "three": 3, "thrice": 3,
    "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20,
}  # fmt: skip
_Q = f"[{_QUOTES}]?"
_LETTER = rf"([{_QUOTES}]?)([a-z]){_Q}(?![a-z])"  # groups: the opening quote (maybe empty), the letter
_LETTER_AFTER_LETTER = re.compile(rf"\bletter\s+(?:is\s+)?{_LETTER}")  # "the letter p", "letter is p"
_LETTER_AFTER_IS = re.compile(rf"\b(?:is|it's|answer:)\s+{_LETTER}")  # "it is 'p'", "... is p."
_ARTICLE = re.compile(r"\s+[a-z]")  # a word after an unquoted "a": the article ("is a noun")
_PREFIX = re.compile(r"^(?:a|answer)\s*:\s*")


def _first_line(text: str) -> str:
    """Return the first non-empty line of ``text``, lowercased, without markdown emphasis or a leading "A:"."""
    for line in str(text).splitlines():
        line = line.replace("**", "").replace("__", "").strip().lower()
        if line:
            return _PREFIX.sub("", line).strip()
    return ""


def _normalize_spelling(line: str) -> str:
    tokens = re.findall(r"[a-z]+", line)
    best: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:  # the longest run of single letters, whatever separates them
        if len(token) == 1:
            run.append(token)
            continue
        if len(run) > len(best):
            best = run
        run = []
    return " ".join(best) if len(best) >= 2 else " ".join(tokens)


def _normalize_letter(line: str) -> str:
    bare = line.strip(" .!?,;:" + _QUOTES)
    if len(bare) == 1 and bare.isalpha():
        return bare
    for pattern in (_LETTER_AFTER_LETTER, _LETTER_AFTER_IS):
        for match in pattern.finditer(line):
            quote, letter = match.group(1), match.group(2)
            after_is = line[match.start() : match.start(1)].rstrip().endswith(("is", "it's"))
            # "is a vowel", "is a noun": an unquoted "a" after "is" and before a word is the article, not the answer
            if quote or letter != "a" or not after_is or not _ARTICLE.match(line, match.end()):
                return letter
    return bare


def _normalize_count(line: str) -> str:
    number = re.search(r"\d+", line)
    if number:
        return str(int(number.group()))
    for word in re.findall(r"[a-z]+", line):
        if word in _NUMBER_WORDS:
            return str(_NUMBER_WORDS[word])
    return line.strip(" .!?" + _QUOTES)


def normalize_answer(text: str, task: str) -> str:
    """Return the comparable form of an answer to ``task`` (applied alike to predictions and references).

    Only the first non-empty line counts, lowercased, emphasis and a leading "A:" / "Answer:" removed.
    ``spelling``: the longest run of single letters, whatever separates them ("A-P-P-L-E", "a, p, p, l, e",
    "The letters are a p p l e") -> ``"a p p l e"``; an unspelled "apple" stays ``"apple"`` (not a spelling).
    ``position``: one letter ("p", "'p'", "p.", "the letter p", "The 3rd letter is p") -> ``"p"``; an unquoted
    "a" between "is" and a word is the article, not a letter ("The third letter is a vowel" names none).
    ``count``: the first number, digits or a word ("2", "two", "twice", "It appears 2 times") -> ``"2"``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {list(TASKS)}")
    line = _first_line(text)
    if task == "spelling":
        return _normalize_spelling(line)
    if task == "position":
        return _normalize_letter(line)
    return _normalize_count(line)


def is_correct(prediction: str, answer: str, task: str) -> bool:
    """Return True when ``prediction`` matches ``answer`` exactly after :func:`normalize_answer`."""
    return normalize_answer(prediction, task) == normalize_answer(answer, task)
