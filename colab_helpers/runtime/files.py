"""Atomic file writes and writable-directory checks: nothing this package writes is ever left half written.

A destination that cannot be written (a read-only folder, a read-only file system such as ``/kaggle/input``, a
path below a regular file) is a ``PermissionError`` that names the destination the caller asked for, never the
temporary file beside it, and it comes before any work is done where that can be known in advance.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# errno values that mean "you cannot write here" (EEXIST / ENOTDIR: a path component is a regular file).
_UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST})
_FIX = "pass a folder you can write to (e.g. one below the current directory)"


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and return it; raise ``PermissionError`` naming it when it cannot be written."""
    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"results dir {str(directory)!r} is a file; pass a directory path instead")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise PermissionError(
            f"results dir {str(directory)!r} is not writable ({exc.strerror or exc}); "
            "pass a directory you can write to, e.g. results_dir='results'"
        ) from exc
    return directory


def _unwritable(target: Path, exc: OSError | None = None) -> PermissionError:
    """The error for a destination we cannot write: it names ``target`` and the fix, not a temporary file."""
    blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason = f"{str(blocker)!r} is a file, not a folder"
    elif exc is not None and exc.errno == errno.EROFS:
        reason = "the file system is read-only"
    else:
        reason = f"{str(target.parent)!r} is not writable"
    return PermissionError(f"cannot write {str(target)!r}: {reason}; {_FIX}")


def _is_unwritable(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in _UNWRITABLE_ERRNOS


def check_creatable_dir(path: str | os.PathLike[str], *, what: str = "folder", example: str | None = None) -> None:
    """Raise before any work when ``path`` cannot become a folder: its nearest existing ancestor is a file, or
    cannot be written. Creates nothing (``ensure_writable_dir`` creates). ``what`` names the setting in the error,
    ``example`` is the fix it suggests (default ``{what}='results/run1'``)."""
    path = Path(path)
    example = example or f"{what}='results/run1'"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r}: {str(existing)!r} is a file; pass a folder path instead, "
                                 f"e.g. {example}")  # fmt: skip
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(path)!r}: {str(existing)!r} is not writable; "
                              f"pass a folder you can write to, e.g. {example}")  # fmt: skip


def ensure_writable_parent(target: str | os.PathLike[str]) -> Path:
    """Create the folder that will hold ``target`` and return it.

    Raises ``PermissionError`` naming ``target`` and the fix when that folder cannot be created or written: call
    it before expensive work whose result goes to ``target``.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if not _is_unwritable(exc):
            raise
        raise _unwritable(target, exc) from exc
    if not os.access(parent, os.W_OK | os.X_OK):  # always true for root, who may write anyway
        raise _unwritable(target)
    return parent


@contextmanager
def _named_after(target: Path) -> Iterator[None]:
    """Turn "cannot write here" errors of the block into :func:`_unwritable` ones naming ``target``."""
    try:
        yield
    except OSError as exc:
        if not _is_unwritable(exc):
            raise
        raise _unwritable(target, exc) from exc


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, on error delete it.

    ``PermissionError`` naming ``target`` (not the temporary file) when its folder cannot be written, raised
    before the block runs.
    """
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {str(target)!r}: it is a folder; pass a file path")
    ensure_writable_parent(target)
    with _named_after(target):
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; results are ordinary files
    try:
        yield tmp
        with _named_after(target):
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory onto ``target`` (an old one is moved aside first, then deleted).

    ``PermissionError`` naming ``target`` when it cannot be replaced.
    """
    with _named_after(Path(target)):
        if not target.exists():
            os.replace(tmp, target)
            return
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / "previous")
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old / "previous", target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


def atomic_dir(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_dir)`` on a temporary directory beside ``path``, then rename it onto ``path``; return it.

    A failure removes the temporary directory and leaves any older ``path`` as it was. ``PermissionError``
    naming ``path`` when its folder cannot be written, raised before ``write`` is called.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file; pass a directory path to save into")
    ensure_writable_parent(target)
    with _named_after(target):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def size_mismatch(folder: str | os.PathLike[str], sizes: Mapping[str, int]) -> str | None:
    """Return what is wrong with the files a record lists under ``folder`` (``{name: bytes}``), in a few words
    naming the file; None when every one is there with its size. Checkpoints and converted models use it."""
    for name, size in sizes.items():
        file = Path(folder) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the record says {size}"
    return None
