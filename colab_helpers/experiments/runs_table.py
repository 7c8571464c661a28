"""The ``runs.csv`` file: cell values as text and back, the table parsed, read and rendered, its locked rewrite.

No runs here, only the file: :mod:`.tracking` (``RunManager``) decides what the rows say, this module how they are
written and read back (:func:`read_runs`, :func:`read_runs_table`). Cells are text: ``None`` is an empty cell, floats
are exact (``repr``), lists and dicts are JSON, and :func:`parse_value` turns numbers and booleans back. Every write
(:func:`update_table`) takes an exclusive lock on ``runs.csv.lock``, re-reads the file, applies its change, writes a
temporary file, fsyncs it and renames it onto ``runs.csv``: a killed writer never leaves a half-written file and
concurrent writers never lose an update. A broken file is a ``ValueError`` naming the file and the line, and is never
overwritten; readers take no lock (they always see a complete version).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_write_text
from ..runtime.records import to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import pandas

CSV_NAME = "runs.csv"
LOCK_NAME = "runs.csv.lock"
CORE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "sweep",
    "status",
    "started_at",
    "ended_at",
    "duration_s",
    "error",
    "config_hash",
    "env",
    "version",
)

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")


# --- cells -------------------------------------------------------------------------------------------------


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return ``mapping`` with nested dicts flattened to dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    """Return the CSV text of one cell: ``None`` -> ``""``, floats exactly (``repr``), lists/dicts as JSON."""
    value = to_jsonable(value, keep_nonfinite=True)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, sort_keys=False)


def parse_value(text: str) -> Any:
    """Return the Python value of one CSV cell: ``""`` -> None, numbers and booleans parsed, else the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if _INT.match(text):
        return int(text)
    if _NUMBER.match(text) or text.lower() in ("nan", "inf", "-inf", "+inf"):
        return float(text)
    return text


# --- the table ---------------------------------------------------------------------------------------------


def parse_table(text: str, path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Return ``(header, rows)`` of a runs.csv text; raise ``ValueError`` naming ``path`` and the bad line."""
    if not text.strip():
        return [], []
    fix = "fix or delete that line by hand (the file was left untouched)"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise ValueError(f"{path}, line {reader.line_num}: cannot parse the header ({exc}); {fix}") from None
    if "run_id" not in header:
        raise ValueError(f"{path}, line 1: the header has no 'run_id' column ({header[:5]}...); {fix}")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates or "" in header:
        what = f"repeats the column(s) {duplicates}" if duplicates else "has an empty column name"
        raise ValueError(f"{path}, line 1: the header {what}; {fix}")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: cannot parse the row ({exc}); {fix}") from None
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(fields)} fields but the header has {len(header)}; {fix}"
            )
        row = dict(zip(header, fields, strict=True))
        run_id = row["run_id"]
        if not run_id or run_id in seen:
            what = "has an empty run_id" if not run_id else f"repeats run_id {run_id!r}"
            raise ValueError(f"{path}, line {line}: the row {what}; {fix}")
        seen.add(run_id)
        rows.append(row)
    return header, rows


def read_text(path: Path) -> str:
    """Return the text of ``path``; ``ValueError`` naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); restore it from a copy or delete it"
        ) from None


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Return ``(header, rows)`` of ``path`` (empty when the file does not exist)."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return [], []
    return parse_table(text, path)


def render_table(header: list[str], rows: list[dict[str, str]]) -> str:
    """Return the CSV text of ``header`` and ``rows`` (a cell missing from a row is empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([row.get(name, "") for name in header] for row in rows)
    return buffer.getvalue()


def csv_path(root: str | os.PathLike[str]) -> Path:
    """Return ``root/runs.csv`` when ``root`` is a directory, else ``root`` itself (a runs.csv path)."""
    path = Path(root).expanduser()
    return path / CSV_NAME if path.is_dir() else path


def missing_table(path: Path) -> FileNotFoundError:
    """Return the error for a ``runs.csv`` that is not there, saying how to make one."""
    return FileNotFoundError(
        f"no runs table at {str(path)!r}; start a run with RunManager(root).new_run(config) or pass the "
        "results dir that holds runs.csv"
    )


def find_row(rows: list[dict[str, str]], run_id: str, path: Path) -> dict[str, str]:
    """Return the row of ``run_id``; KeyError naming the file when there is none."""
    for row in rows:
        if row["run_id"] == run_id:
            return row
    raise KeyError(f"no run {run_id!r} in {path}; RunManager(root).runs() lists the runs it has")


def merge_cells(header: list[str], row: dict[str, str], cells: Mapping[str, str]) -> None:
    """Set ``cells`` in ``row``; a new name becomes a new column of ``header``."""
    for name, text in cells.items():
        if name not in header:
            header.append(name)
        row[name] = text


def read_runs_table(root: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Return ``(columns, rows)`` of ``root`` (a results dir or a ``runs.csv`` path), each cell as its CSV text.

    No pandas: this is what ``python -m colab_helpers runs`` reads. ``FileNotFoundError`` without a
    ``runs.csv``, ``ValueError`` (file and line) when it is broken.
    """
    path = csv_path(root)
    if not path.is_file():
        raise missing_table(path)
    return read_table(path)


def read_runs(root: str | os.PathLike[str], sweep: str | None = None) -> pandas.DataFrame:
    """Return the runs of ``root`` (a results dir or a ``runs.csv`` path) as a DataFrame, one row per run.

    Numbers and booleans are parsed; empty cells are NaN. Raises ``FileNotFoundError`` when there is no
    ``runs.csv`` and ``ValueError`` (file and line) when it is broken.
    """
    import pandas as pd

    path = csv_path(root)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise missing_table(path) from None
    header, _ = parse_table(text, path)  # clear errors before pandas sees the text
    if not header:
        return pd.DataFrame(columns=list(CORE_COLUMNS))
    frame = pd.read_csv(
        io.StringIO(text), keep_default_na=False, na_values=["", "nan", "NaN"], dtype={"run_id": str, "sweep": str}
    )
    if sweep is not None:
        frame = frame[frame["sweep"] == sweep].reset_index(drop=True)
    return frame


# --- the lock ----------------------------------------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path) -> Iterator[str | None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if needed) until the block ends or the process dies.

    Yields None when locked, or the reason when the file system cannot lock (the block then runs unlocked);
    any other ``OSError`` is raised.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            problem = None
        except (ImportError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            problem = str(exc)
        yield problem
    finally:
        os.close(fd)


def update_table(root: Path, change: Callable[[list[str], list[dict[str, str]]], None]) -> str | None:
    """Under the lock: re-read ``root/runs.csv``, apply ``change(header, rows)`` in place, write it back atomically.

    Returns None, or the reason the file system could not lock (the write was then atomic, but may have raced).
    """
    path = root / CSV_NAME
    with exclusive_lock(root / LOCK_NAME) as problem:
        header, rows = read_table(path)
        header = header or list(CORE_COLUMNS)
        change(header, rows)
        if problem is None:  # only a lock holder writes temp files, so any left now is from a killed writer
            for stale in root.glob(f".{CSV_NAME}.*.tmp"):
                stale.unlink(missing_ok=True)
        atomic_write_text(path, render_table(header, rows))
    return problem


__all__ = [
    "CORE_COLUMNS",
    "CSV_NAME",
    "LOCK_NAME",
    "csv_path",
    "exclusive_lock",
    "find_row",
    "flatten",
    "format_value",
    "merge_cells",
    "missing_table",
    "parse_table",
    "parse_value",
    "read_runs",
    "read_runs_table",
    "read_table",
    "read_text",
    "render_table",
    "update_table",
]
