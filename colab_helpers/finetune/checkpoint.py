"""Atomic training checkpoints: a kill at any moment leaves the previous complete checkpoint usable.

A checkpoint is written into a temporary directory (``.tmp-checkpoint-<step>-*``), every file is fsynced, a
``manifest.json`` listing each file and its size is written last, and the directory is renamed to
``checkpoint-<step>`` with ``os.replace``. Only then is the ``latest`` pointer file rewritten (atomically) and
older checkpoints beyond ``keep`` deleted. A directory counts as a checkpoint only when its manifest is there and
every file it lists has the listed size, so a half-written directory is never resumed from, whatever ``latest``
says.

torch and safetensors are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
STATE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"
_FORMAT = 1


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """Return the step in a ``checkpoint-<step>`` directory name, or None for any other name."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a finished checkpoint: its manifest names its step and every file with its size."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return False
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != _FORMAT or manifest.get("step") != step:
            return False
        files = manifest["files"]
        return bool(files) and all(
            (path / name).is_file() and (path / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Return the complete checkpoints under ``directory``, oldest step first (half-written ones left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """Return the newest complete checkpoint under ``directory``, or None.

    The ``latest`` pointer is trusted only when it names a complete checkpoint at least as new as every other
    complete one; otherwise the directories are scanned (a kill between the rename and the pointer update
    leaves the pointer one checkpoint behind).
    """
    directory = Path(directory)
    complete = list_checkpoints(directory)
    newest = complete[-1] if complete else None
    pointer = directory / LATEST
    if pointer.is_file():
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        named = directory / text if text else None
        if named is not None and named == newest:
            return newest
        if named is not None and not is_complete(named):
            logger.warning("%s names %s, which is missing or incomplete; using %s", pointer, named.name, newest)
    return newest


def remove_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary and trash directories a killed run left under ``directory``; return what was deleted."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def remove_all(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete every checkpoint (complete or not), the pointer and stale temporaries; return the checkpoints deleted."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if checkpoint_step(path) is not None and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        (directory / LATEST).unlink(missing_ok=True)
    remove_stale(directory)
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open a directory: rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    writers: dict[str, Callable[[Path], None]],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``checkpoint-<step>`` atomically under ``directory`` and return its path.

    ``writers`` maps a file name to a function writing that file at the path it is given; ``state`` is stored
    as ``state.json``. Afterwards ``latest`` points at the new checkpoint and only the newest ``keep`` complete
    checkpoints remain.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}-", dir=directory))
    try:
        for name, write in writers.items():
            write(tmp / name)
        (tmp / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        files = {}
        for path in sorted(tmp.iterdir()):
            _fsync_file(path)
            files[path.name] = path.stat().st_size
        manifest = {"format": _FORMAT, "step": step, "files": files}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if final.exists():  # rewriting a step (e.g. after a CUDA fallback at a checkpoint step): swap it out first
            trash = Path(tempfile.mkdtemp(prefix=f"{_TRASH_PREFIX}{step}-", dir=directory))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, final.name + "\n")
    for old in list_checkpoints(directory)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``state.json`` of a checkpoint directory."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))
