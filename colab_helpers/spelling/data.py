"""The spelling data sets: their settings (:class:`SpellingDataConfig`), the words of each split, and the
train / validation / test ``DatasetDict`` built, saved, loaded, fingerprinted and summarised.

Every row has ``task``, ``template``, ``word``, ``question`` (the bare question), ``prompt`` (what the model sees),
``answer`` (the canonical answer), ``text`` (prompt followed by the answer: one training example), ``position``
(1-based, on ``position`` rows; **None** on the others) and ``letter`` (on ``count`` rows; **None** on the others).
Training rows are spelling only unless ``train_tasks`` says otherwise; no word is in two splits. Words come from
:mod:`.words`, questions and rows from :mod:`.questions`; ``datasets`` is imported only to build or load splits.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import check_integer, is_integer
from ..runtime.files import atomic_write_text, ensure_writable_dir
from .questions import TASKS, TEMPLATES, make_rows, uses_chat
from .words import is_plain_word, load_words, word_list

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
COLUMNS: tuple[str, ...] = ("task", "template", "word", "question", "prompt", "answer", "text", "position", "letter")
SAVE_FORMATS: tuple[str, ...] = ("jsonl", "arrow")


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
            setattr(self, name, check_integer(getattr(self, name), name, fix=f"e.g. {name}=100"))
        if self.min_length > self.max_length:
            raise ValueError(
                f"min_length ({self.min_length}) must be <= max_length ({self.max_length}); swap them or widen the range"
            )
        if self.max_tokens is not None:
            if not is_integer(self.max_tokens) or self.max_tokens < 1:
                raise ValueError(f"max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}; e.g. "
                                 "max_tokens=3")  # fmt: skip
            self.max_tokens = int(self.max_tokens)
        if not is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
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
        given = word_list(words, f"split_words[{split!r}]")
        bad = [(index, w) for index, w in enumerate(given) if not is_plain_word(w)]
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
    "SPLITS",
    "SpellingDataConfig",
    "build_datasets",
    "examples",
    "fingerprint",
    "load_datasets",
    "save_datasets",
    "summary_table",
]
