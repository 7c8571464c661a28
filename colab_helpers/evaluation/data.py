"""Text datasets for perplexity and LoRA recovery: the embedded offline corpus, or WikiText from the hub.

``load_text_dataset("embedded")`` never touches the network; ``load_text_dataset("auto")`` takes WikiText-2
when the Hugging Face Hub answers and the embedded corpus otherwise. ``datasets`` is imported only when a hub
dataset is actually loaded.
"""

from __future__ import annotations

import gzip
import logging
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import OfflineFallbackWarning
from ..runtime.hub import hub_reachable, offline_by_env

logger = logging.getLogger(__name__)

EMBEDDED_DATASET = "embedded"
DEFAULT_HUB_DATASET = "wikitext-2-raw-v1"
# user-facing name -> (hub repository, configuration)
HUB_DATASETS: dict[str, tuple[str, str]] = {
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
}
_ALIASES: dict[str, str] = {"wikitext": "wikitext-2-raw-v1", "wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}
_SOURCES: dict[str, str] = {
    EMBEDDED_DATASET: "The Jargon File 4.4.7 (public domain), shipped in colab_helpers/embedded/corpus",
    "wikitext-2-raw-v1": "Salesforce/wikitext, wikitext-2-raw-v1 (CC BY-SA 3.0), Hugging Face Hub",
    "wikitext-103-raw-v1": "Salesforce/wikitext, wikitext-103-raw-v1 (CC BY-SA 3.0), Hugging Face Hub",
}
# Texts of another domain than the embedded corpus: name -> where it is read from. They measure what recovery on the
# corpus keeps of a model's general ability: legal prose shipped in colab_helpers/embedded/texts (see SOURCE.md there),
# and technical reference, Python's own documentation, which every CPython carries (nothing to ship).
OTHER_DOMAIN_TEXTS: dict[str, str] = {"gpl-3.0": "gpl-3.0.txt", "python-docs": "pydoc_data.topics"}
# The word list of the spelling study (lowercase a-z words from Debian's wamerican, SCOWL licence: see WORDS.md beside
# it), read here so that the evaluation tasks, a stage before the study, share the one copy.
WORDS_RESOURCE: tuple[str, ...] = ("spelling", "words.txt.gz")


@dataclass(frozen=True)
class TextDataset:
    """A text corpus as paragraphs: ``train`` and ``validation`` are lists of non-empty strings."""

    name: str  # the name it was loaded by, e.g. "embedded" or "wikitext-2-raw-v1"
    train: list[str] = field(repr=False)  # training paragraphs, in corpus order
    validation: list[str] = field(repr=False)  # held-out paragraphs, disjoint from train
    source: str = ""  # where the text comes from and its licence

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must be a non-empty string, e.g. 'embedded'")
        for split in ("train", "validation"):
            paragraphs = getattr(self, split)
            if not isinstance(paragraphs, list) or not paragraphs:
                raise ValueError(f"{split} must be a non-empty list of paragraph strings, got {paragraphs!r:.80}")
            if not all(isinstance(p, str) and p for p in paragraphs):
                raise ValueError(f"{split} must hold only non-empty strings; drop empty paragraphs first")

    @property
    def train_text(self) -> str:
        """Return the training paragraphs joined by blank lines."""
        return "\n\n".join(self.train)

    @property
    def validation_text(self) -> str:
        """Return the validation paragraphs joined by blank lines."""
        return "\n\n".join(self.validation)

    def __repr__(self) -> str:
        train_chars = sum(map(len, self.train))
        validation_chars = sum(map(len, self.validation))
        return (
            f"TextDataset({self.name!r}: train {len(self.train)} paragraphs / {train_chars:,} chars, "
            f"validation {len(self.validation)} paragraphs / {validation_chars:,} chars)"
        )


def available_datasets() -> list[str]:
    """Return the dataset names ``load_text_dataset`` accepts: ``"embedded"`` (offline) first, then hub ones."""
    return [EMBEDDED_DATASET, *HUB_DATASETS]


def other_domain_text(name: str = "gpl-3.0") -> str:
    """Return the whole text ``name`` of another domain (offline): ``"gpl-3.0"`` (the GNU GPL, legal English) or
    ``"python-docs"`` (the language reference topics of ``pydoc_data.topics``, which differ between Python versions:
    compare figures measured on one version)."""
    if name not in OTHER_DOMAIN_TEXTS:
        raise ValueError(f"unknown text {name!r}; choose one of {sorted(OTHER_DOMAIN_TEXTS)}")
    if name == "python-docs":
        from pydoc_data.topics import topics  # the standard library's copy of the reference documentation

        return "\n\n".join(topics[key].strip() for key in sorted(topics))
    resource = resources.files("colab_helpers").joinpath("embedded", "texts", OTHER_DOMAIN_TEXTS[name])
    return resource.read_text(encoding="utf-8")


def shipped_words() -> list[str]:
    """Return the words of the shipped word list (lowercase a-z, sorted; offline)."""
    resource = resources.files("colab_helpers").joinpath(*WORDS_RESOURCE)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as handle:
        return [line.strip() for line in handle if line.strip()]


def load_text_dataset(name: str = "auto", *, max_chars: int | None = None) -> TextDataset:
    """Return the dataset ``name`` as paragraphs.

    ``"embedded"`` reads the corpus shipped in the package (offline); ``"wikitext-2-raw-v1"`` (alias
    ``"wikitext"``) and ``"wikitext-103-raw-v1"`` come from the Hugging Face Hub through ``datasets``;
    ``"auto"`` is WikiText-2 when the hub is reachable, else the embedded corpus. ``max_chars`` keeps whole
    paragraphs from the start of each split up to that many characters (at least one paragraph).
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive number of characters or None, got {max_chars}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string such as 'embedded' or 'auto', got {name!r}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key == "auto":
        if hub_reachable():
            try:
                return _truncate(_load_hub(DEFAULT_HUB_DATASET), max_chars)
            except ConnectionError as exc:
                warnings.warn(
                    f"could not load {DEFAULT_HUB_DATASET!r} from the Hugging Face Hub ({exc}); "
                    "using the embedded offline corpus instead",
                    OfflineFallbackWarning,
                    stacklevel=2,
                )
        logger.info("hub unreachable: using the embedded corpus")
        return _truncate(_load_embedded(), max_chars)
    if key == EMBEDDED_DATASET:
        return _truncate(_load_embedded(), max_chars)
    if key in HUB_DATASETS:
        return _truncate(_load_hub(key, asked=name), max_chars)
    raise ValueError(
        f"unknown dataset {name!r}; available offline: {EMBEDDED_DATASET!r}; from the Hugging Face Hub: "
        f"{', '.join(repr(n) for n in HUB_DATASETS)} (alias 'wikitext'); or 'auto' to choose by connectivity"
    )


def _truncate(dataset: TextDataset, max_chars: int | None) -> TextDataset:
    """Return ``dataset`` with each split cut to whole paragraphs totalling at most ``max_chars``."""
    if max_chars is None:
        return dataset

    def head(paragraphs: list[str]) -> list[str]:
        kept, total = [], 0
        for paragraph in paragraphs:
            if kept and total + len(paragraph) > max_chars:
                break
            kept.append(paragraph)
            total += len(paragraph)
        return kept

    return TextDataset(dataset.name, head(dataset.train), head(dataset.validation), dataset.source)


def _read_embedded_split(split: str) -> list[str]:
    """Return the paragraphs of the shipped ``split`` (``train`` or ``validation``)."""
    resource = resources.files("colab_helpers").joinpath("embedded", "corpus", f"{split}.txt.gz")
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as handle:
        return [p.strip() for p in handle.read().split("\n\n") if p.strip()]


def _load_embedded() -> TextDataset:
    """Return the embedded Jargon File corpus (offline)."""
    return TextDataset(EMBEDDED_DATASET, _read_embedded_split("train"), _read_embedded_split("validation"), _SOURCES[EMBEDDED_DATASET])


def _unreachable(name: str, reason: str) -> ConnectionError:
    """Return the error raised when hub dataset ``name`` cannot be had, naming the offline alternative."""
    return ConnectionError(
        f"dataset {name!r} needs the Hugging Face Hub, which is unreachable here ({reason}); "
        f"use load_text_dataset('embedded') (offline, shipped with the package) or load_text_dataset('auto')"
    )


def _load_hub(key: str, asked: str | None = None) -> TextDataset:
    """Return hub dataset ``key`` (a ``HUB_DATASETS`` name); raise ``ConnectionError`` when it cannot be had.

    ``asked`` is the name the user typed (an alias, perhaps), used in the error message.
    """
    asked = asked or key
    repo, config = HUB_DATASETS[key]
    variable = offline_by_env()
    if variable is None and not hub_reachable():
        raise _unreachable(asked, "no answer from the hub")
    import datasets  # heavy: imported only here

    try:  # offline by variable, datasets still finds a copy in its local cache
        loaded = datasets.load_dataset(repo, config)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not cached / no network"
        if variable is not None or _is_connection_error(exc):
            reason = f"{variable} is set and no cached copy was found" if variable else type(exc).__name__
            raise _unreachable(asked, reason) from exc
        raise
    return TextDataset(key, _paragraphs(loaded["train"]["text"]), _paragraphs(loaded["validation"]["text"]), _SOURCES[key])


def _paragraphs(lines: Any) -> list[str]:
    """Return paragraphs from WikiText-style rows: runs of non-empty rows, joined by newlines."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _is_connection_error(exc: BaseException) -> bool:
    """Return True when ``exc`` (or its cause) says the network or hub could not be reached."""
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if type(exc).__name__ in {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout"}:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False
