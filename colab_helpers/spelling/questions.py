"""The three tasks and how each is asked: question templates, ordinals, the prompt a model sees (its chat template,
or "Q: ...\\nA:"), and one row per word and task.

* ``spelling``: "Spell 'apple'." -> ``a p p l e`` (other templates: hyphens, "letter by letter", ...);
* ``position``: "What is the 3rd letter of 'apple'?" -> ``p`` (1-based; ordinals written "3rd" or "third");
* ``count``: "How many times does 'p' appear in 'apple'?" -> ``2``; the letters asked about cycle through absent
  (0), once (1) and repeated (2+) so that "0" and "1" are not free answers.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..checks import is_integer

TASKS: tuple[str, ...] = ("spelling", "position", "count")
COUNT_BUCKETS: tuple[str, ...] = ("0", "1", "2+")  # how often the asked letter occurs, cycled per split
PLAIN_PROMPT = "Q: {question}\nA:"  # without a chat template; the answer follows after one space


@dataclass(frozen=True)
class Template:
    """One way of asking a task: a ``str.format`` question and, for spelling, the separator of the answer.

    Fields the question may use: ``word``, ``letter`` (count), ``n``, ``ordinal`` ("3rd") and
    ``ordinal_word`` ("third") (position).
    """

    name: str
    question: str
    separator: str = " "  # spelling answers: the letters joined by this


TEMPLATES: dict[str, dict[str, Template]] = {
    "spelling": {
        "spell": Template("spell", "Spell '{word}'."),
        "letter_by_letter": Template("letter_by_letter", "Spell the word '{word}' letter by letter."),
        "hyphens": Template("hyphens", "Spell '{word}' with hyphens between the letters.", "-"),
        "how_do_you_spell": Template("how_do_you_spell", "How do you spell '{word}'? Separate the letters with spaces."),
    },
    "position": {
        "ordinal": Template("ordinal", "What is the {ordinal} letter of '{word}'?"),
        "ordinal_word": Template("ordinal_word", "What is the {ordinal_word} letter in the word '{word}'?"),
        "position_n": Template("position_n", "Which letter is at position {n} in '{word}'?"),
    },
    "count": {
        "how_many_times": Template("how_many_times", "How many times does '{letter}' appear in '{word}'?"),
        "how_many_letters": Template("how_many_letters", "How many '{letter}' letters are in the word '{word}'?"),
        "count_letter": Template("count_letter", "Count the letter '{letter}' in '{word}'. Answer with a number."),
    },
}

_ORDINAL_WORDS = (
    "", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
    "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def ordinal(n: int) -> str:
    """Return ``n`` with its English ordinal suffix: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 22nd, 101st."""
    _check_ordinal(n)
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def ordinal_word(n: int) -> str:
    """Return ``n`` (1-99) as an English ordinal word: first, ..., twentieth, twenty-first, ..., ninety-ninth."""
    _check_ordinal(n)
    if n > 99:
        raise ValueError(f"ordinal_word covers 1-99, got {n}; use ordinal(n) for '{ordinal(n)}'")
    if n < 20:
        return _ORDINAL_WORDS[n]
    tens, ones = divmod(n, 10)
    if ones == 0:
        return _TENS[tens][:-1] + "ieth"  # twenty -> twentieth
    return f"{_TENS[tens]}-{_ORDINAL_WORDS[ones]}"


def _check_ordinal(n: int) -> None:
    if not is_integer(n) or n < 1:
        raise ValueError(f"positions are 1-based integers, got {n!r}; the first letter is position 1")


def spell(word: str, separator: str = " ") -> str:
    """Return ``word`` spelled out: ``spell("apple")`` -> ``"a p p l e"``, ``spell("apple", "-")`` -> ``"a-p-p-l-e"``."""
    return separator.join(word)


# --- prompts ----------------------------------------------------------------------------------------------


def uses_chat(tokenizer: Any | None, chat: bool | None = None) -> bool:
    """Return True when prompts go through ``tokenizer``'s chat template (``chat=None``: when it has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    if chat is None:
        return has_template
    if chat and not has_template:
        raise ValueError("chat=True but the tokenizer has no chat_template; pass chat=None or chat=False")
    return bool(chat)


def format_prompt(question: str, tokenizer: Any | None = None, *, chat: bool | None = None) -> str:
    """Return what the model sees for ``question``: the chat template with a generation prompt, or "Q: ...\\nA:"."""
    if uses_chat(tokenizer, chat):
        messages = [{"role": "user", "content": question}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return PLAIN_PROMPT.format(question=question)


def format_example(question: str, answer: str, tokenizer: Any | None = None, *, chat: bool | None = None) -> tuple[str, str]:
    """Return ``(prompt, text)``: the prompt, and the prompt followed by ``answer`` (one training example).

    With a chat template the text is the rendered two-turn conversation (it ends with the template's
    end-of-turn marker); without, ``prompt + " " + answer``.
    """
    prompt = format_prompt(question, tokenizer, chat=chat)
    if not uses_chat(tokenizer, chat):
        return prompt, f"{prompt} {answer}"
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    full = str(tokenizer.apply_chat_template(messages, tokenize=False))
    if full.startswith(prompt + answer):
        return prompt, full
    eos = getattr(tokenizer, "eos_token", None) or ""
    return prompt, prompt + answer + eos  # a template that renders the assistant turn differently


# --- rows -------------------------------------------------------------------------------------------------


def _row(task: str, template: Template, word: str, answer: str, tokenizer: Any, chat: bool | None,
         position: int | None = None, letter: str | None = None, **fields: Any) -> dict[str, Any]:  # fmt: skip
    question = template.question.format(word=word, letter=letter, **fields)
    prompt, text = format_example(question, answer, tokenizer, chat=chat)
    return {"task": task, "template": template.name, "word": word, "question": question, "prompt": prompt,
            "answer": answer, "text": text, "position": position, "letter": letter}  # fmt: skip


def _count_letter(word: str, bucket: str, rng: random.Random) -> str:
    """Return a letter occurring in ``word`` as often as ``bucket`` says ("0", "1", "2+"), or the nearest bucket."""
    counts = Counter(word)
    pools = {
        "0": sorted(set("abcdefghijklmnopqrstuvwxyz") - set(counts)),
        "1": sorted(c for c, k in counts.items() if k == 1),
        "2+": sorted(c for c, k in counts.items() if k >= 2),
    }
    start = COUNT_BUCKETS.index(bucket)
    for offset in range(len(COUNT_BUCKETS)):  # a word without repeated letters falls back to the next bucket
        pool = pools[COUNT_BUCKETS[(start + offset) % len(COUNT_BUCKETS)]]
        if pool:
            return rng.choice(pool)
    raise AssertionError("unreachable: some bucket always has a letter")  # pragma: no cover


def make_rows(words: Sequence[str], tasks: Sequence[str], *, tokenizer: Any | None = None, chat: bool | None = None,
              templates: Mapping[str, Sequence[str]] | None = None, seed: int | str = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Return one row per word and task (in word order, tasks in the order given), choices seeded by ``seed``.

    ``words`` are checked first: each a string with at least one letter (ValueError naming its position).
    """
    words = _check_row_words(words)
    rng = random.Random(seed)
    names = {task: list((templates or {}).get(task) or TEMPLATES[task]) for task in tasks}
    rows: list[dict[str, Any]] = []
    count_index = 0
    for word in words:
        for task in tasks:
            template = TEMPLATES[task][rng.choice(names[task])]
            if task == "spelling":
                rows.append(_row(task, template, word, spell(word, template.separator), tokenizer, chat))
            elif task == "position":
                n = rng.randint(1, len(word))
                rows.append(_row(task, template, word, word[n - 1], tokenizer, chat, position=n, n=n,
                                 ordinal=ordinal(n), ordinal_word=ordinal_word(n)))  # fmt: skip
            else:
                letter = _count_letter(word, COUNT_BUCKETS[count_index % len(COUNT_BUCKETS)], rng)
                count_index += 1
                rows.append(_row(task, template, word, str(word.count(letter)), tokenizer, chat, letter=letter))
    return rows


def _check_row_words(words: Any) -> list[str]:
    """Return ``words`` as a list after checking each is a string with a letter: an empty word has no letter to ask
    about (its position question drew from an empty range deep inside ``random``)."""
    if isinstance(words, str) or not isinstance(words, Iterable):
        raise ValueError(f"words must be a list of words, got {words!r:.60}; e.g. words=['apple', 'river']")
    listed = list(words)
    for index, word in enumerate(listed):
        if not isinstance(word, str):
            raise ValueError(f"words[{index}] must be a string, got {word!r:.60} ({type(word).__name__})")
        if not word.strip():
            raise ValueError(
                f"words[{index}] is {word!r}, an empty word: every word needs at least one letter to ask about; drop "
                "it (words = [w for w in words if w.strip()]) or build the words with load_words()"
            )
    return listed
