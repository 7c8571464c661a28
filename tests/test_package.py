"""The package itself: light import, atomic writes, results on disk, secret redaction."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import colab_helpers as ch
from colab_helpers.runtime.files import atomic_dir, atomic_path, atomic_write_text, ensure_writable_dir
from colab_helpers.runtime.secrets import contains_secret, redact

HEAVY = ["torch", "transformers", "unsloth", "bitsandbytes", "peft", "datasets", "matplotlib", "pandas"]


def test_import_is_light() -> None:
    code = "import sys, colab_helpers; print(sorted(m for m in {} if m in sys.modules))".format(HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves() -> None:
    for name in ch.__all__:
        assert getattr(ch, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        ch.no_such_thing  # noqa: B018


def test_ensure_writable_dir_creates_and_rejects(tmp_path: Path) -> None:
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="pass a directory"):
        ensure_writable_dir(tmp_path / "file")


def test_unwritable_results_dir_is_a_clear_error(tmp_path: Path) -> None:
    # Works as root too: a path below a regular file can never be created.
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable.*pass a directory"):
        ensure_writable_dir(tmp_path / "file" / "results")


def test_atomic_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_redact_and_contains_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-0123456789")
    text = "token hf_abcdefghijklmnop and sk-0123456789 here"
    assert contains_secret(text) and contains_secret(text.encode())
    assert redact(text) == "token *** and *** here"
    assert not contains_secret(redact(text))


def test_save_results_writes_json_and_markdown_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")

    class Report:
        def to_dict(self) -> dict:
            return {"loss": math.nan, "path": tmp_path, "note": "hf_secretvalue123", "items": (1, 2.5)}

        def to_markdown(self) -> str:
            return "| a | b |"

    paths = ch.save_results(tmp_path / "out", report=Report(), plain={"x": 1})
    assert sorted(p.name for p in paths) == ["plain.json", "report.json", "report.md"]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == {"loss": None, "path": str(tmp_path), "note": "***", "items": [1, 2.5]}


# --- an unwritable destination is named as the caller gave it, never as a temporary file ----------------------


def _no_write(tmp: Path) -> None:
    raise AssertionError("atomic_dir started the work before checking where it goes")


@pytest.mark.parametrize("writer", ["atomic_write_text", "atomic_path", "atomic_dir"])
def test_atomic_writers_name_an_unwritable_destination(writer: str, tmp_path: Path) -> None:
    # Works as root too: a path below a regular file can never be created.
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sub" / "out.json"
    with pytest.raises(PermissionError, match="pass a folder you can write to") as raised:
        if writer == "atomic_write_text":
            atomic_write_text(target, "{}")
        elif writer == "atomic_path":
            with atomic_path(target):
                raise AssertionError("the block ran before the destination was checked")
        else:
            atomic_dir(target, _no_write)
    message = str(raised.value)
    assert repr(str(target)) in message and "is a file, not a folder" in message and ".tmp" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermissionError(13, "Permission denied"), "is not writable"),
        (OSError(30, "Read-only file system"), "read-only"),
    ],
)
def test_refused_temporary_file_is_reported_as_the_destination(
    error: OSError, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a read-only folder (or /kaggle/input) does to mkstemp / mkdtemp, simulated so that it runs as root too.
    def refuse(*args: object, dir: str = "", prefix: str = "", **kwargs: object) -> None:
        raise type(error)(error.errno, error.strerror, f"{dir}/{prefix}xyz.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    calls = (lambda: atomic_write_text(tmp_path / "a.json", "{}"), lambda: atomic_dir(tmp_path / "model", _no_write))
    for call in calls:
        with pytest.raises(PermissionError, match=f"cannot write '{tmp_path}/(a.json|model)': .*{reason}") as raised:
            call()
        assert "xyz.tmp" not in str(raised.value) and "pass a folder you can write to" in str(raised.value)


def test_refused_rename_is_reported_as_the_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atomic_write_text(tmp_path / "a.json", "old")

    def refuse(source: object, target: object) -> None:
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match=r"cannot write '.*a\.json'.*pass a folder you can write to"):
        atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_path_onto_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="it is a folder; pass a file path"):
        atomic_write_text(tmp_path, "x")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
@pytest.mark.parametrize("writer", ["atomic_write_text", "atomic_dir"])
def test_atomic_writers_in_a_read_only_folder(writer: str, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot write '.*ro/out'.*not writable.*pass a folder you can"):
            if writer == "atomic_write_text":
                atomic_write_text(folder / "out", "x")
            else:
                atomic_dir(folder / "out", _no_write)
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []
