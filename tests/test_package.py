"""The package itself: light import, atomic writes, results on disk, secret redaction."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import colab_helpers as ch
from colab_helpers.runtime.files import atomic_path, atomic_write_text, ensure_writable_dir
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
