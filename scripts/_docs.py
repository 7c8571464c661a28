"""Write the generated part of a findings page (docs/*.md) and keep the hand-written prose around it.

The scripts that measure findings write their tables between two markers; what a person wrote outside them
(the verdict, the reading of the tables) survives a rerun. Shared by scripts/pruning_study.py and
scripts/spelling_results.py.
"""

from __future__ import annotations

from pathlib import Path

START, END = "<!-- generated:start -->", "<!-- generated:end -->"


def write_doc(path: Path, generated: str, template: str) -> Path:
    """Replace the generated section of ``path`` (or create it from ``template``, which holds ``{generated}``)."""
    from colab_helpers._io import atomic_write_text

    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            return atomic_write_text(path, head + generated + tail)
    return atomic_write_text(path, template.format(generated=generated))
