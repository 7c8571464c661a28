"""Spelling, letter-position and letter-count questions about English words, as train / validation / test splits.

Three tasks, each asked through several prompt templates (:data:`TEMPLATES`):

* ``spelling``: "Spell 'apple'." -> ``a p p l e`` (other templates: hyphens, "letter by letter", ...);
* ``position``: "What is the 3rd letter of 'apple'?" -> ``p`` (1-based; ordinals written "3rd" or "third");
* ``count``: "How many times does 'p' appear in 'apple'?" -> ``2``; the letters asked about cycle through
  absent (0), once (1) and repeated (2+) so that "0" and "1" are not free answers.

Every row of :func:`build_datasets` has ``task``, ``template``, ``word``, ``question`` (the bare question),
``prompt`` (what the model sees: the tokenizer's chat template when it has one, else ``"Q: ...\\nA:"``),
``answer`` (the canonical answer), ``text`` (prompt followed by the answer: one training example),
``position`` (int, 1-based, on ``position`` rows; **None** on the others) and ``letter`` (the letter asked
about on ``count`` rows; **None** on the others). Training rows are spelling only unless ``train_tasks`` says
otherwise; validation and test hold all three tasks; no word is in two splits.

Words come from ``words.txt.gz`` in this folder (63,875 lowercase words from Debian's ``wamerican``, SCOWL
licence: see ``WORDS.md``), so everything works offline. ``datasets`` is imported only to build or load splits.
The word list, the templates and the split builder are in one module because every row's fields, and the
fingerprint that tracks a dataset, depend on all three agreeing.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_write_text, ensure_writable_dir

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("spelling", "position", "count")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
COUNT_BUCKETS: tuple[str, ...] = ("0", "1", "2+")  # how often the asked letter occurs, cycled per split
WORDS_RESOURCE = "words.txt.gz"
PLAIN_PROMPT = "Q: {question}\nA:"  # without a chat template; the answer follows after one space
COLUMNS: tuple[str, ...] = ("task", "template", "word", "question", "prompt", "answer", "text", "position", "letter")
SAVE_FORMATS: tuple[str, ...] = ("jsonl", "arrow")
_WORD = re.compile(r"^[a-z]+$")


# --- templates --------------------------------------------------------------------------------------------


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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"positions are 1-based integers, got {n!r}; the first letter is position 1")


def spell(word: str, separator: str = " ") -> str:
    """Return ``word`` spelled out: ``spell("apple")`` -> ``"a p p l e"``, ``spell("apple", "-")`` -> ``"a-p-p-l-e"``."""
    return separator.join(word)


# --- settings ---------------------------------------------------------------------------------------------


@dataclass
class SpellingDataConfig:
    """What :func:`build_datasets` builds; sizes count words (each word gives one row per task of its split)."""

    train_size: int = 2000  # words in the training split
    validation_size: int = 200  # words in the validation split (early stopping)
    test_size: int = 500  # words in the test split (the accuracies reported)
    min_length: int = 3  # shortest word kept, in letters
    max_length: int = 10  # longest word kept, in letters
    max_tokens: int | None = None  # keep only words the tokenizer splits into <= this many tokens; None = any
    train_tasks: tuple[str, ...] = ("spelling",)  # tasks of the training rows
    eval_tasks: tuple[str, ...] = TASKS  # tasks of the validation and test rows
    templates: dict[str, list[str]] | None = None  # task -> template names to use; None (or a task left out) = all
    chat: bool | None = None  # None: the tokenizer's chat template when it has one; False: plain "Q: ...\nA:"
    seed: int = 0  # word order, split assignment, template / position / letter choices

    def __post_init__(self) -> None:
        for name in ("train_size", "validation_size", "test_size", "min_length", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}; e.g. {name}=100")
        if self.min_length > self.max_length:
            raise ValueError(
                f"min_length ({self.min_length}) must be <= max_length ({self.max_length}); swap them or widen the range"
            )
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}; e.g. max_tokens=3")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise ValueError(f"chat must be True, False or None (automatic), got {self.chat!r}")
        self.train_tasks = _check_tasks(self.train_tasks, "train_tasks")
        self.eval_tasks = _check_tasks(self.eval_tasks, "eval_tasks")
        self.templates = _check_templates(self.templates)

    def smoke(self) -> SpellingDataConfig:
        """Return a tiny copy for SMOKE runs: 32 training, 8 validation and 16 test words."""
        return dataclasses.replace(self, train_size=32, validation_size=8, test_size=16)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-serializable data."""
        values = dataclasses.asdict(self)
        values["train_tasks"], values["eval_tasks"] = list(self.train_tasks), list(self.eval_tasks)
        return values


def _near(word: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _check_tasks(tasks: Any, what: str) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks or ())
    if not tasks:
        raise ValueError(f"{what} is empty; use some of {list(TASKS)}, e.g. {what}=('spelling',)")
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} in {what}{_near(task, TASKS)}; the tasks are {list(TASKS)}")
    return tuple(dict.fromkeys(tasks))


def _check_templates(templates: Any) -> dict[str, list[str]] | None:
    if templates is None:
        return None
    if not isinstance(templates, Mapping):
        raise ValueError(
            f"templates must map a task to template names, got {templates!r}; e.g. templates={{'spelling': ['spell']}}"
        )
    checked: dict[str, list[str]] = {}
    for task, names in templates.items():
        if task not in TEMPLATES:
            raise ValueError(f"unknown task {task!r} in templates{_near(task, TASKS)}; the tasks are {list(TASKS)}")
        names = [names] if isinstance(names, str) else list(names or [])
        if not names:
            raise ValueError(f"templates[{task!r}] is empty; name at least one of {list(TEMPLATES[task])}")
        for name in names:
            if name not in TEMPLATES[task]:
                raise ValueError(
                    f"unknown {task} template {name!r}{_near(name, TEMPLATES[task])}; "
                    f"the {task} templates are {list(TEMPLATES[task])}"
                )
        checked[task] = list(dict.fromkeys(names))
    return checked


# --- words ------------------------------------------------------------------------------------------------


def shipped_words() -> list[str]:
    """Return the 63,875 words of the shipped list (lowercase a-z, sorted)."""
    resource = resources.files(__package__).joinpath(WORDS_RESOURCE)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as handle:
        return [line.strip() for line in handle if line.strip()]


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
    source = shipped_words() if words is None else _as_word_list(words, "words")
    kept = sorted({w for w in source if _WORD.match(w) and min_length <= len(w) <= max_length})
    if tokenizer is not None and max_tokens is not None and kept:
        counts = [len(ids) for ids in tokenizer(kept, add_special_tokens=False)["input_ids"]]
        kept = [w for w, n in zip(kept, counts, strict=True) if n <= max_tokens]
    logger.info("%d words of %d-%d letters kept%s", len(kept), min_length, max_length,
                f" (<= {max_tokens} tokens)" if max_tokens else "")  # fmt: skip
    return kept


def _as_word_list(words: Any, what: str) -> list[str]:
    if isinstance(words, str) or not isinstance(words, Iterable):
        raise ValueError(f"{what} must be a list of words, got {words!r:.60}; e.g. {what}=['apple', 'river']")
    listed = list(words)
    bad = [w for w in listed if not isinstance(w, str)]
    if bad:
        raise ValueError(f"{what} must hold strings only, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [w.strip() for w in listed]


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


# --- splits -----------------------------------------------------------------------------------------------


def _check_split_words(split_words: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Return the explicit words per split (validated, de-duplicated); ValueError when splits overlap."""
    if split_words is None:
        return {}
    if not isinstance(split_words, Mapping):
        raise ValueError(f"split_words must map split names to word lists, got {split_words!r:.60}")
    fixed: dict[str, list[str]] = {}
    for split, words in split_words.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in split_words{_near(split, SPLITS)}; the splits are {list(SPLITS)}")
        given = _as_word_list(words, f"split_words[{split!r}]")
        bad = [(index, w) for index, w in enumerate(given) if not _WORD.match(w)]
        if bad:
            index, word = bad[0]
            empty = ", an empty word" if not word else ""
            raise ValueError(f"split_words[{split!r}][{index}] is {word!r}{empty}: words must be lowercase letters a-z "
                             "only; drop it or fix its spelling")  # fmt: skip
        listed = list(dict.fromkeys(given))
        if not listed:
            raise ValueError(f"split_words[{split!r}] is empty; give at least one word or leave the split out")
        fixed[split] = listed
    names = list(fixed)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(set(fixed[first]) & set(fixed[second]))
            if shared:
                raise ValueError(
                    f"split_words overlap: {len(shared)} word(s) such as {shared[:3]} are in both {first!r} and "
                    f"{second!r}; a word may be in one split only"
                )
    return fixed


def split_words_of(config: SpellingDataConfig, pool: Sequence[str], fixed: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Return the words of each split: the fixed ones as given, the rest drawn (seeded) from ``pool``."""
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    taken = {w for words in fixed.values() for w in words}
    available = [w for w in pool if w not in taken]
    needed = {split: sizes[split] for split in SPLITS if split not in fixed}
    total = sum(needed.values())
    if total and not available:
        raise ValueError(
            f"the word list is empty after filtering (letters a-z, {config.min_length}-{config.max_length} letters"
            f"{f', <= {config.max_tokens} tokens' if config.max_tokens else ''}"
            f"{', explicit split words removed' if taken else ''}); widen the length range, raise max_tokens, "
            "or pass a longer word list"
        )
    if len(available) < total:
        wanted = " + ".join(f"{split} {size}" for split, size in needed.items())
        raise ValueError(
            f"the word list has {len(available)} usable words but the splits need {total} ({wanted}); lower the "
            f"split sizes, widen the length range ({config.min_length}-{config.max_length} letters) or pass more words"
        )
    order = list(available)
    random.Random(config.seed).shuffle(order)
    result: dict[str, list[str]] = {}
    start = 0
    for split in SPLITS:
        if split in fixed:
            result[split] = list(fixed[split])
        else:
            result[split] = sorted(order[start : start + needed[split]])
            start += needed[split]
    return result


def _features() -> Any:
    from datasets import Features, Value

    types = {name: Value("string") for name in COLUMNS}
    types["position"] = Value("int32")
    return Features(types)


def build_datasets(
    tokenizer: Any | None = None,
    config: SpellingDataConfig | None = None,
    *,
    words: Iterable[str] | None = None,
    split_words: Mapping[str, Sequence[str]] | None = None,
    **overrides: Any,
) -> datasets.DatasetDict:
    """Return a ``DatasetDict`` with splits ``train``, ``validation`` and ``test`` (see the module docstring).

    ``config`` (a :class:`SpellingDataConfig`) and keyword ``overrides`` of its fields (``train_size=100``) say
    what to build; ``words`` replaces the shipped list (it is filtered the same way); ``split_words`` fixes
    the words of some splits (``{"test": [...]}``), the others are drawn from the rest. Every problem (unknown
    task or template, overlapping splits, too few words for the sizes) raises ``ValueError`` before any work.
    """
    from datasets import Dataset, DatasetDict

    config = config if config is not None else SpellingDataConfig()
    if not isinstance(config, SpellingDataConfig):
        raise ValueError(f"config must be a SpellingDataConfig, got {type(config).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(SpellingDataConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}{_near(unknown[0], known)}; settings are {sorted(known)}")
        config = dataclasses.replace(config, **overrides)
    chat = uses_chat(tokenizer, config.chat)  # fails now, not after the words are drawn
    fixed = _check_split_words(split_words)
    pool = load_words(config.min_length, config.max_length, tokenizer=tokenizer if config.max_tokens else None,
                      max_tokens=config.max_tokens, words=words)  # fmt: skip
    by_split = split_words_of(config, pool, fixed)
    features = _features()
    splits = {}
    for split in SPLITS:
        tasks = config.train_tasks if split == "train" else config.eval_tasks
        rows = make_rows(by_split[split], tasks, tokenizer=tokenizer, chat=chat, templates=config.templates,
                         seed=f"{config.seed}:{split}")  # fmt: skip
        splits[split] = Dataset.from_list(rows, features=features)
    logger.info("spelling data: %s", ", ".join(f"{s} {len(d)} rows / {len(by_split[s])} words" for s, d in splits.items()))
    return DatasetDict(splits)


# --- saving, loading, looking ------------------------------------------------------------------------------


def save_datasets(data: datasets.DatasetDict, directory: str | Path, *, format: str = "jsonl") -> Path:
    """Write ``data`` under ``directory`` and return it: ``<split>.jsonl`` files (default) or ``save_to_disk``.

    JSONL is small, readable and goes into a results bundle; ``format="arrow"`` is the ``datasets`` format.
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"format must be one of {list(SAVE_FORMATS)}, got {format!r}")
    target = ensure_writable_dir(directory)
    if format == "arrow":
        data.save_to_disk(str(target))
        return target
    for split, dataset in data.items():
        lines = [json.dumps(row, ensure_ascii=False) for row in dataset.to_list()]
        atomic_write_text(target / f"{split}.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return target


def load_datasets(directory: str | Path) -> datasets.DatasetDict:
    """Return the ``DatasetDict`` that :func:`save_datasets` wrote in ``directory`` (either format)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    source = Path(directory).expanduser()
    if (source / "dataset_dict.json").is_file():
        return load_from_disk(str(source))
    files = {split: source / f"{split}.jsonl" for split in SPLITS}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no saved spelling data in {str(source)!r} (missing {missing[0]}); save with save_datasets")
    features = _features()
    splits = {}
    for split, path in files.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = Dataset.from_list(rows, features=features)
    return DatasetDict(splits)


def fingerprint(data: datasets.DatasetDict) -> str:
    """Return a 12-hex fingerprint of the words, prompts and answers of every split (equal data, equal print)."""
    digest = hashlib.sha256()
    for split in sorted(data):
        for row in data[split].select_columns(["task", "word", "prompt", "answer"]).to_list():
            digest.update(json.dumps([split, row], sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:12]


def summary_table(data: datasets.DatasetDict) -> pd.DataFrame:
    """Return a table of rows per split and task, with the number of distinct words per split."""
    import pandas as pd

    records = []
    for split, dataset in data.items():
        counts = Counter(dataset["task"])
        records.append({"split": split, "words": len(set(dataset["word"])), **{t: counts.get(t, 0) for t in TASKS}})
    return pd.DataFrame(records).set_index("split")


def examples(data: datasets.DatasetDict, split: str = "test", per_task: int = 2) -> pd.DataFrame:
    """Return the first ``per_task`` rows of each task in ``split`` (question, answer, template, ...)."""
    frame = data[split].to_pandas()
    columns = ["task", "template", "word", "question", "answer", "position", "letter"]
    return frame.groupby("task", sort=False).head(per_task)[columns].reset_index(drop=True)


__all__ = [
    "COLUMNS",
    "COUNT_BUCKETS",
    "SPLITS",
    "TASKS",
    "TEMPLATES",
    "SpellingDataConfig",
    "Template",
    "build_datasets",
    "examples",
    "fingerprint",
    "format_example",
    "format_prompt",
    "load_datasets",
    "load_words",
    "make_rows",
    "ordinal",
    "ordinal_word",
    "save_datasets",
    "shipped_words",
    "spell",
    "summary_table",
    "uses_chat",
]
