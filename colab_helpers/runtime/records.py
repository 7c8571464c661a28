"""Save what a notebook produced (reports, generations, metrics) as JSON and Markdown files, atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_text, ensure_writable_dir
from .secrets import redact


def to_jsonable(value: Any, *, keep_nonfinite: bool = False) -> Any:
    """Return ``value`` as plain JSON data: dataclasses, ``to_dict()`` objects, mappings, sets, paths, tensors.

    NaN and infinities become None, unless ``keep_nonfinite=True`` (run tracking keeps them: ``runs.csv`` writes
    ``nan``); numpy and torch scalars become Python numbers; anything else unknown becomes its ``str``.
    """
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict(), keep_nonfinite=keep_nonfinite)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), keep_nonfinite=keep_nonfinite)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item, keep_nonfinite=keep_nonfinite) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item, keep_nonfinite=keep_nonfinite) for item in value]
    if isinstance(value, float):
        return float(value) if keep_nonfinite or math.isfinite(value) else None  # float(): numpy float64 too
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist(), keep_nonfinite=keep_nonfinite)
    return str(value)


def save_results(directory: str | os.PathLike[str], **objects: Any) -> list[Path]:
    """Write each object as ``<name>.json`` (and ``<name>.md`` when it has ``to_markdown()``); return the paths.

    Secret values (``HF_TOKEN`` and the like) are redacted from everything written.
    """
    directory = ensure_writable_dir(directory)
    written = []
    for name, value in objects.items():
        text = json.dumps(to_jsonable(value), indent=2, sort_keys=True, allow_nan=False)
        written.append(atomic_write_text(directory / f"{name}.json", redact(text) + "\n"))
        if hasattr(value, "to_markdown") and callable(value.to_markdown):
            written.append(atomic_write_text(directory / f"{name}.md", redact(value.to_markdown()) + "\n"))
    return written
