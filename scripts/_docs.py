"""What the findings scripts (scripts/pruning_study.py, scripts/spelling_results.py) share: they run offline and
quiet, and write the generated part of a page in docs/ between two markers, keeping the hand-written prose
around it (the verdict, the reading of the tables) across reruns. Import it before colab_helpers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # colab_helpers from this checkout

START, END = "<!-- generated:start -->", "<!-- generated:end -->"


def write_doc(path: Path, generated: str, template: str) -> Path:
    """Replace the generated section of ``path`` (or create it from ``template``, which holds ``{generated}``)."""
    from colab_helpers.runtime.files import atomic_write_text

    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            return atomic_write_text(path, head + generated + tail)
    return atomic_write_text(path, template.format(generated=generated))
