"""Small synthetic tasks built from word lists shipped in the package (offline everywhere).

:mod:`.spelling`: spell a word, name the letter at a position, count a letter; train / validation / test
splits with no word shared between them, as a ``datasets.DatasetDict``. ``datasets`` is imported only when a
dataset is built or loaded.
"""

from __future__ import annotations

from .spelling import TASKS, TEMPLATES, SpellingDataConfig, build_datasets, load_datasets, load_words, save_datasets

__all__ = [
    "TASKS",
    "TEMPLATES",
    "SpellingDataConfig",
    "build_datasets",
    "load_datasets",
    "load_words",
    "save_datasets",
]
