"""The embedded corpus, load_text_dataset's names and offline behaviour, and the hub reachability probe."""

from __future__ import annotations

import gzip
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from colab_helpers.runtime import hub
from colab_helpers.evaluation.data import TextDataset, available_datasets, load_text_dataset, other_domain_text
from colab_helpers.errors import OfflineFallbackWarning

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "colab_helpers" / "embedded" / "corpus"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def embedded() -> TextDataset:
    return load_text_dataset("embedded")


def test_embedded_corpus_sizes_and_split(embedded: TextDataset) -> None:
    total_chars = len(embedded.train_text) + len(embedded.validation_text)
    assert total_chars >= 500_000
    share = len(embedded.validation) / (len(embedded.train) + len(embedded.validation))
    assert 0.04 < share < 0.06  # every 20th paragraph
    assert not set(embedded.train) & set(embedded.validation)
    assert all("\n\n" not in p and p == p.strip() for p in embedded.train[:200])
    assert "hacker" in embedded.train_text


def test_embedded_corpus_files_are_reproducible() -> None:
    for split in ("train", "validation"):
        data = (CORPUS / f"{split}.txt.gz").read_bytes()
        assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0: a rebuild gives the same bytes
        text = gzip.decompress(data).decode("utf-8")
        assert not any(ch in text for ch in "\x00\x0c\x1b\r\u2500\u201c")  # no control chars, boxes, curly quotes
        assert "{{" not in text and "{VAX}" not in text  # cross-reference markup removed
    assert "public domain" in (CORPUS / "SOURCE.md").read_text(encoding="utf-8")
    assert load_text_dataset("embedded") == load_text_dataset("embedded")


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Any:
    """scripts/build_embedded.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location("build_embedded", REPO / "scripts" / "build_embedded.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_embedded", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_corpus_rebuild_is_byte_identical(build: Any, tmp_path: Path) -> None:
    jargon = build.find_jargon()
    if jargon is None:
        pytest.skip("Debian's jargon-text package is not installed (apt-get install -y jargon-text): nothing to "
                    "rebuild the corpus from")
    build.build_corpus(tmp_path, jargon)
    for split in ("train.txt.gz", "validation.txt.gz", "SOURCE.md"):
        assert (tmp_path / "corpus" / split).read_bytes() == (CORPUS / split).read_bytes(), split


def test_corpus_source_describes_the_shipped_files(build: Any) -> None:
    # SOURCE.md's table and text are what the build script writes for the shipped splits (the copyright notice
    # quoted at its end comes from Debian's package and is checked by the rebuild above)
    figures: dict[str, Any] = {}
    for split in ("train", "validation"):
        data = (CORPUS / f"{split}.txt.gz").read_bytes()
        text = gzip.decompress(data).decode("utf-8")
        paragraphs = len(build.read_split(CORPUS.parent, split))
        figures[split] = {"paragraphs": paragraphs, "chars": len(text), "gz_bytes": len(data)}
    shipped = (CORPUS / "SOURCE.md").read_text(encoding="utf-8")
    written = build._source_md(figures, "(version 4.4.7)", "")
    assert shipped.startswith(written.rstrip("\n")), "SOURCE.md differs from what scripts/build_embedded.py writes"


def test_corpus_build_names_where_to_get_the_jargon_file(build: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"jargon\.txt\.gz of Debian's jargon-text package.*apt-get install"):
        build.build_corpus(tmp_path, tmp_path / "missing.txt.gz")
    assert not (tmp_path / "corpus").exists()


def test_other_domain_text_is_shipped_in_the_package() -> None:
    text = other_domain_text("gpl-3.0")
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in text
    assert len(text) > 30_000 and text.rstrip().endswith("<https://www.gnu.org/licenses/why-not-lgpl.html>.")
    assert other_domain_text() == text  # the default
    from colab_helpers.evaluation import other_domain_text as exported

    assert exported is other_domain_text
    with pytest.raises(ValueError, match=r"unknown text 'gpl-2'; choose one of \['gpl-3.0', 'python-docs'\]"):
        other_domain_text("gpl-2")


def test_python_docs_is_the_standard_librarys_reference_documentation() -> None:
    from pydoc_data.topics import topics

    text = other_domain_text("python-docs")
    assert len(text) > 100_000 and text == other_domain_text("python-docs")  # the same text on every call
    assert topics["assert"].strip() in text and text.startswith(topics[sorted(topics)[0]].strip())


def test_text_dataset_fields_and_repr(embedded: TextDataset) -> None:
    assert embedded.name == "embedded" and "Jargon File" in embedded.source
    text = repr(embedded)
    assert text.startswith("TextDataset('embedded'") and len(text) < 200
    assert embedded.validation_text.split("\n\n") == embedded.validation
    with pytest.raises(ValueError, match="train must be a non-empty list"):
        TextDataset("x", [], ["a"])
    with pytest.raises(ValueError, match="non-empty strings"):
        TextDataset("x", ["a", ""], ["b"])


def test_max_chars_keeps_whole_paragraphs(embedded: TextDataset) -> None:
    small = load_text_dataset("embedded", max_chars=3000)
    assert sum(map(len, small.train)) <= 3000 and small.train == embedded.train[: len(small.train)]
    assert load_text_dataset("embedded", max_chars=1).train == embedded.train[:1]  # at least one paragraph
    with pytest.raises(ValueError, match="max_chars must be a positive"):
        load_text_dataset("embedded", max_chars=0)


def test_available_and_unknown_names() -> None:
    names = available_datasets()
    assert names[0] == "embedded" and "wikitext-2-raw-v1" in names
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*available offline: 'embedded'"):
        load_text_dataset("nope")


def test_auto_offline_is_embedded_silently(offline: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "silently": no warning at all
        data = load_text_dataset("auto", max_chars=2000)
    assert data.name == "embedded"


def test_hub_name_unreachable_names_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in hub.OFFLINE_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "_probe", lambda endpoint, timeout: False)  # no network answer
    with pytest.raises(ConnectionError, match=r"dataset 'wikitext' needs the Hugging Face Hub.*load_text_dataset\('embedded'\)"):
        load_text_dataset("wikitext")


def test_hub_name_with_offline_variable_and_empty_cache(tmp_path: Path) -> None:
    code = (
        "from colab_helpers.evaluation.data import load_text_dataset\n"
        "try:\n    load_text_dataset('wikitext-2-raw-v1')\n"
        "except ConnectionError as exc:\n    print('ERR', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # empty cache
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ERR dataset 'wikitext-2-raw-v1' needs the Hugging Face Hub" in out.stdout, out.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set" in out.stdout and "load_text_dataset('embedded')" in out.stdout


def test_import_does_not_load_datasets() -> None:
    code = "import sys, colab_helpers.evaluation.data, colab_helpers.models.loading; print(sorted({'datasets', 'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_hub_reachable_offline_variable_skips_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("hub_reachable must not touch the network when offline by variable")

    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", value)
        assert hub.hub_reachable() is False
    with pytest.raises(ValueError, match="timeout must be > 0"):
        hub.hub_reachable(timeout=0)


def test_hub_reachable_probes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in hub.OFFLINE_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    calls: list[str] = []

    def refuse(request: object, timeout: float) -> None:
        calls.append(request.full_url)  # type: ignore[attr-defined]
        raise OSError("connection refused")

    monkeypatch.setattr(hub.urllib.request, "urlopen", refuse)
    hub.hub_reachable.cache_clear()
    try:
        assert hub.hub_reachable() is False and hub.hub_reachable() is False
        assert calls == ["http://hub.invalid"]  # cached: one request per session
    finally:
        hub.hub_reachable.cache_clear()


def test_auto_falls_back_with_warning_when_hub_load_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import colab_helpers.evaluation.data as data

    monkeypatch.setattr(data, "hub_reachable", lambda: True)

    def fail(key: str, asked: str | None = None) -> TextDataset:
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(data, "_load_hub", fail)
    with pytest.warns(OfflineFallbackWarning, match="reset by peer"):
        assert load_text_dataset("auto", max_chars=1000).name == "embedded"


def test_wikitext_rows_become_paragraphs() -> None:
    from colab_helpers.evaluation.data import _paragraphs

    rows = ["", " = Title = \n", "", " First line .\n", " Second line .\n", "", "", " Last .\n"]
    assert _paragraphs(rows) == ["= Title =", "First line .\nSecond line .", "Last ."]
