"""Downloads: what a bundle holds, atomic writes, secret redaction, and each download path with a stub Colab."""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from colab_helpers.runtime import downloads
from colab_helpers.runtime.downloads import bundle, download, is_credential_file, persist_to_drive
from colab_helpers.errors import ColabHelpersWarning

TOKEN = "hf_TESTtoken1234567890abcdef"  # not a real token: a value the redactor must find


def _write(root: Path, relative: str, data: bytes | str = "x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder with everything a run leaves behind, good and bad."""
    root = tmp_path / "run-1"
    for name in ("metrics.json", "metrics.csv", "config.yaml", "summary.md", "plots/loss.svg", "plots/loss.html"):
        _write(root, name, f"content of {name}\n")
    _write(root, "plots/loss.png", b"\x89PNG\r\n\x1a\n" + bytes(100))
    _write(root, "notebooks/01-prune.ipynb", '{"cells": []}')
    _write(root, "tokenizer/tokenizer.json", "{}")
    _write(root, "tokenizer/special_tokens_map.json", "{}")
    for name in ("model/model.safetensors", "model/pytorch_model.bin", "adapter.pt", "merged.gguf"):
        _write(root, name, bytes(64))
    _write(root, "checkpoint-10/trainer_state.json", "{}")
    _write(root, "checkpoint-10/optimizer.pt", bytes(64))
    for name in (".env", "hf_token.txt", ".netrc", ".git-credentials", "notes/.env.local"):
        _write(root, name, "secret stuff")
    _write(root, "__pycache__/x.cpython-311.pyc", bytes(8))
    _write(root, ".ipynb_checkpoints/01-prune-checkpoint.ipynb", "{}")
    _write(root, ".run-1-bundle.zip.abcd.tmp", "half a zip")  # left by an interrupted write
    _write(root, "big.csv", "0123456789" * 3000)  # 30 kB
    (root / "outside-link.txt").symlink_to(_write(tmp_path, "elsewhere.txt", "not ours"))
    return root


def _names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


def test_bundle_keeps_results_and_leaves_out_the_rest(results: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zip_path = bundle(results, max_file_mb=0.01)
    assert zip_path == results / "run-1-bundle.zip"
    assert _names(zip_path) == [  # no weights, checkpoints, credentials, caches, temporary files or links
        "run-1/config.yaml",
        "run-1/metrics.csv",
        "run-1/metrics.json",
        "run-1/notebooks/01-prune.ipynb",
        "run-1/plots/loss.html",
        "run-1/plots/loss.png",
        "run-1/plots/loss.svg",
        "run-1/summary.md",
        "run-1/tokenizer/special_tokens_map.json",
        "run-1/tokenizer/tokenizer.json",
    ]
    messages = [str(w.message) for w in caught if issubclass(w.category, ColabHelpersWarning)]
    assert len(messages) == 2
    assert "big.csv (0.0 MB)" in messages[0] and "max_file_mb=None" in messages[0]
    for name in (".env", "hf_token.txt", ".netrc", ".git-credentials", "notes/.env.local"):
        assert name in messages[1]


def test_bundle_with_weights_and_no_size_limit(results: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zip_path = bundle(results, output=tmp_path / "out" / "all.zip", include_weights=True, max_file_mb=None)
    names = _names(zip_path)
    for name in ("model/model.safetensors", "model/pytorch_model.bin", "adapter.pt", "merged.gguf", "big.csv"):
        assert f"run-1/{name}" in names
    assert "run-1/checkpoint-10/optimizer.pt" in names and "run-1/checkpoint-10/trainer_state.json" in names
    assert not any(".env" in n or "token.txt" in n or "netrc" in n or "credentials" in n for n in names)
    assert len([w for w in caught if "credentials" in str(w.message)]) == 1  # they stay out, whatever the flags
    assert names == sorted(names)


@pytest.mark.filterwarnings("ignore:bundle left out:colab_helpers.errors.ColabHelpersWarning")
def test_bundle_is_deterministic_and_never_contains_itself(results: Path) -> None:
    first = _names(bundle(results, max_file_mb=None))
    second = _names(bundle(results, max_file_mb=None))  # the first zip now lies in the folder
    assert first == second == sorted(first)
    assert not any(n.endswith(".zip") or n.endswith(".tmp") or "__pycache__" in n or "checkpoint" in n for n in first)
    assert "run-1/outside-link.txt" not in first  # links are not followed


@pytest.mark.filterwarnings("ignore:bundle left out:colab_helpers.errors.ColabHelpersWarning")
def test_bundle_failure_leaves_no_partial_zip(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = bundle(results, max_file_mb=None)
    before_bytes = good.read_bytes()
    before_listing = sorted(p.name for p in results.iterdir())
    added: list[str] = []
    real_add = downloads._add

    def add_then_fail(archive: Any, path: Path, *args: Any) -> None:
        real_add(archive, path, *args)
        added.append(path.name)
        if len(added) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(downloads, "_add", add_then_fail)
    with pytest.raises(OSError, match="No space left"):
        bundle(results, max_file_mb=None)
    assert len(added) == 3  # it failed mid-way, not before starting
    assert sorted(p.name for p in results.iterdir()) == before_listing  # no temporary file left behind
    assert good.read_bytes() == before_bytes  # the previous bundle is untouched


def test_bundle_redacts_secret_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = tmp_path / "results"
    _write(root, "log.txt", f"logged in with {TOKEN}\nstep 1 loss 2.5\n")
    _write(root, "executed.ipynb", f'{{"cells": [{{"source": "login(\\"{TOKEN}\\")"}}]}}')
    _write(root, "state.bin.dat", b"\x00\x01" + TOKEN.encode() + b"\x00")  # binary: cannot be redacted
    _write(root, "clean.json", '{"loss": 2.5}')
    with pytest.warns(ColabHelpersWarning, match="may hold credentials: results/state.bin.dat"):
        zip_path = bundle(root)
    assert TOKEN.encode() not in zip_path.read_bytes()
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["results/clean.json", "results/executed.ipynb", "results/log.txt"]
        contents = {name: archive.read(name).decode() for name in archive.namelist()}
    assert all(TOKEN not in text for text in contents.values())
    assert contents["results/log.txt"] == "logged in with ***\nstep 1 loss 2.5\n"
    assert '"login(\\"***\\")"' in contents["results/executed.ipynb"]
    assert TOKEN in (root / "log.txt").read_text()  # the files on disk are not changed


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        (".env", True),
        (".env.production", True),
        ("hf_token", True),
        ("HF_TOKEN.txt", True),
        (".netrc", True),
        (".git-credentials", True),
        ("kaggle.json", True),
        ("client_secret.json", True),
        ("tokenizer.json", False),
        ("tokenizer_config.json", False),
        ("special_tokens_map.json", False),
        ("metrics.json", False),
        ("environment.yaml", False),
    ],
)
def test_is_credential_file(name: str, credential: bool) -> None:
    assert is_credential_file(name) is credential


def test_bundle_errors_name_the_value_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'.*no-such-dir' does not exist.*bundle\('results'\)"):
        bundle(tmp_path / "no-such-dir")
    file = _write(tmp_path, "metrics.json", "{}")
    with pytest.raises(NotADirectoryError, match="is a file.*download"):
        bundle(file)
    with pytest.raises(ValueError, match="max_file_mb must be > 0 or None"):
        bundle(tmp_path, max_file_mb=0)
    with pytest.raises(ValueError, match="output must end in .zip"):
        bundle(tmp_path, output=tmp_path / "out.tar")


# --- download and Drive, with a stub google.colab ------------------------------------------------------


class _FakeColab:
    """Stand-in for ``google.colab``: records downloads and mounts Drive into a temporary folder."""

    def __init__(self, mount_works: bool = True) -> None:
        self.downloaded: list[str] = []
        self.mounted: list[str] = []
        self.mount_works = mount_works
        self.module = types.ModuleType("google.colab")
        self.module.files = types.SimpleNamespace(download=self.downloaded.append)  # type: ignore[attr-defined]
        self.module.drive = types.SimpleNamespace(mount=self._mount)  # type: ignore[attr-defined]

    def _mount(self, mount_point: str) -> None:
        self.mounted.append(mount_point)
        if self.mount_works:
            (Path(mount_point) / "MyDrive").mkdir(parents=True)


@pytest.fixture
def fake_colab(monkeypatch: pytest.MonkeyPatch) -> _FakeColab:
    fake = _FakeColab()
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setattr(google, "colab", fake.module, raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", fake.module)
    return fake


@pytest.fixture
def no_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.colab", None)  # makes `import google.colab` fail


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Pretend an IPython kernel with a browser runs the tests; return what gets displayed."""
    shown: list[Any] = []
    monkeypatch.setattr(downloads, "_in_kernel", lambda: True)
    monkeypatch.setattr(downloads, "_display", shown.append)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("COLAB_HELPERS_HEADLESS", raising=False)
    return shown


def test_download_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.zip': it does not exist"):
        download(tmp_path / "nothing.zip")


def test_download_on_colab(tmp_path: Path, fake_colab: _FakeColab, kernel: list[Any]) -> None:
    file = _write(tmp_path, "metrics.csv", "step,loss\n")
    assert download(file) == "colab"
    assert fake_colab.downloaded == [str(file)]
    assert kernel == []


def test_download_folder_is_bundled_first(tmp_path: Path, fake_colab: _FakeColab, kernel: list[Any]) -> None:
    _write(tmp_path / "results", "metrics.csv", "step,loss\n")
    assert download(tmp_path / "results") == "colab"
    assert fake_colab.downloaded == [str(tmp_path / "results" / "results-bundle.zip")]
    assert _names(Path(fake_colab.downloaded[0])) == ["results/metrics.csv"]


def test_download_in_jupyter_shows_a_link(
    tmp_path: Path, no_colab: None, kernel: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.display import HTML, FileLink

    monkeypatch.chdir(tmp_path)
    file = _write(tmp_path, "out/metrics.csv", "step,loss\n")
    assert download(file) == "link"
    assert isinstance(kernel[0], FileLink) and kernel[0].path == "out/metrics.csv"
    elsewhere = _write(tmp_path.parent / f"{tmp_path.name}-other", "metrics.csv", "x")
    assert download(elsewhere) == "link"
    assert isinstance(kernel[1], HTML) and str(elsewhere) in kernel[1].data


def test_download_headless_only_logs(
    tmp_path: Path, fake_colab: _FakeColab, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = _write(tmp_path, "metrics.csv", "step,loss\n")
    with caplog.at_level(logging.INFO, logger="colab_helpers.runtime.downloads"):
        assert download(file) == "logged"  # no kernel in pytest
        monkeypatch.setattr(downloads, "_in_kernel", lambda: True)
        monkeypatch.setenv("COLAB_HELPERS_HEADLESS", "1")  # papermill inside Colab: a kernel, no browser
        assert download(file) == "logged"
    assert fake_colab.downloaded == []
    assert caplog.text.count(str(file)) == 2


def test_persist_to_drive_is_colab_only(tmp_path: Path, no_colab: None) -> None:
    file = _write(tmp_path, "metrics.csv", "x")
    with pytest.raises(RuntimeError, match="Colab only"):
        persist_to_drive(file, mount_point=tmp_path / "drive")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        persist_to_drive(tmp_path / "missing.csv", mount_point=tmp_path / "drive")


def test_persist_to_drive_mounts_once_and_copies(tmp_path: Path, fake_colab: _FakeColab) -> None:
    mount = tmp_path / "drive"
    file = _write(tmp_path, "results-bundle.zip", b"PK zip bytes")
    copied = persist_to_drive(file, mount_point=mount)
    assert copied == mount / "MyDrive" / "colab_helpers" / "results-bundle.zip"
    assert copied.read_bytes() == b"PK zip bytes"
    assert fake_colab.mounted == [str(mount)]

    folder = tmp_path / "results"
    _write(folder, "metrics.json", "{}")
    _write(folder, ".env", "HF_TOKEN=...")
    _write(folder, ".metrics.json.x1.tmp", "half")
    copied_dir = persist_to_drive(folder, "MyDrive/runs", mount_point=mount)
    assert sorted(p.name for p in copied_dir.iterdir()) == ["metrics.json"]
    _write(folder, "metrics.json", '{"loss": 1}')
    persist_to_drive(folder, "MyDrive/runs", mount_point=mount)  # replaces the older copy
    assert (copied_dir / "metrics.json").read_text() == '{"loss": 1}'
    assert fake_colab.mounted == [str(mount)]  # mounted once
    assert sorted(p.name for p in (mount / "MyDrive" / "runs").iterdir()) == ["results"]  # no staging left


def test_persist_to_drive_failed_copy_keeps_the_old_one(
    tmp_path: Path, fake_colab: _FakeColab, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "drive"
    folder = tmp_path / "results"
    _write(folder, "metrics.json", "old")
    copied = persist_to_drive(folder, mount_point=mount)
    _write(folder, "metrics.json", "new")

    def copytree_then_fail(source: Any, target: Any, **kwargs: Any) -> None:
        os.makedirs(target)
        Path(target, "metrics.json").write_text("ne")
        raise OSError(5, "Input/output error")  # Drive dropped mid-copy

    monkeypatch.setattr(downloads.shutil, "copytree", copytree_then_fail)
    with pytest.raises(OSError, match="Input/output error"):
        persist_to_drive(folder, mount_point=mount)
    assert (copied / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in copied.parent.iterdir()) == ["results"]


def test_persist_to_drive_mount_refused(tmp_path: Path, fake_colab: _FakeColab) -> None:
    fake_colab.mount_works = False
    with pytest.raises(RuntimeError, match=r"not mounted.*drive.mount\('/content/drive'\)"):
        persist_to_drive(_write(tmp_path, "a.csv", "x"), mount_point=tmp_path / "drive")


def test_final_lora_adapter_goes_in_but_checkpoints_and_models_stay_out(tmp_path) -> None:
    import zipfile

    from colab_helpers.runtime.downloads import bundle

    root = tmp_path / "run"
    for relative in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                     "training/checkpoint-10/adapter_model.safetensors", "merged/model.safetensors", "metrics.json"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"{}")
    with zipfile.ZipFile(bundle(root)) as archive:
        names = sorted(name.split("/", 1)[1] for name in archive.namelist())
    assert names == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.json"]


def test_drive_results_dir_on_colab_and_elsewhere(tmp_path: Path, fake_colab: _FakeColab) -> None:
    from colab_helpers.runtime.downloads import drive_results_dir

    mount = tmp_path / "drive"
    target = drive_results_dir("results/06_sweeps", mount_point=mount)
    assert target == mount / "MyDrive" / "colab_helpers" / "06_sweeps" and target.is_dir()
    assert fake_colab.mounted == [str(mount)]


def test_drive_results_dir_off_colab_warns_and_keeps_the_path(no_colab: None) -> None:
    from colab_helpers.runtime.downloads import drive_results_dir
    from colab_helpers.errors import ColabHelpersWarning

    with pytest.warns(ColabHelpersWarning, match="not on Colab"):
        assert drive_results_dir("results/x") == Path("results/x")


# --- no secret value in a bundle: compressed files, other encodings, file names -----------------------------

KEY = "wandbKEY0123456789abcdef"  # a second secret whose value makes no credential-looking file name
SECRET_FORMS = [value.encode(encoding) for value in (TOKEN, KEY)
                for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")]  # fmt: skip


def _unpacked(data: bytes, depth: int = 0) -> list[bytes]:
    """``data`` and everything packed inside it (gzip, bzip2, xz, zip and tar, nested), member names included."""
    import bz2
    import gzip
    import io
    import lzma
    import tarfile

    found = [data]
    if depth > 5:
        return found
    if data[:2] == b"\x1f\x8b":
        found += _unpacked(gzip.decompress(data), depth + 1)
    elif data[:3] == b"BZh":
        found += _unpacked(bz2.decompress(data), depth + 1)
    elif data[:6] == b"\xfd7zXZ\x00":
        found += _unpacked(lzma.decompress(data), depth + 1)
    elif data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                found += [info.filename.encode()] + _unpacked(archive.read(info), depth + 1)
    elif data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                found.append(member.name.encode())
                if member.isfile():
                    found += _unpacked(archive.extractfile(member).read(), depth + 1)  # type: ignore[union-attr]
    return found


def _assert_no_secret(blobs: list[bytes]) -> None:
    for blob in blobs:
        for form in SECRET_FORMS:
            assert form not in blob, (form, blob[:200])


def _packed(kind: str, data: bytes, name: str = "inner.txt") -> bytes:
    import bz2
    import gzip
    import io
    import lzma
    import tarfile

    if kind == "gz":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=out, mode="w") as archive:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def secrets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A results folder where the secrets hide in compressed files, other encodings and file names."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    root = tmp_path / "run"
    line = f"login {TOKEN} wandb {KEY} café\n"
    _write(root, "log.txt.gz", _packed("gz", line.encode()))  # (a)
    _write(root, "utf16-bom.txt", line.encode("utf-16"))  # (b) UTF-16 with byte-order mark
    _write(root, "utf16be.txt", line.encode("utf-16-be"))  # ... without one
    _write(root, "utf32.log", line.encode("utf-32"))
    _write(root, "latin1.txt", line.encode("latin-1"))  # not valid UTF-8
    _write(root, f"{KEY}.log", "step 1\n")  # (c) a file named after a secret
    _write(root, f"by-key/{KEY}/metrics.json", '{"loss": 2.5}')  # ... and a folder
    _write(root, f"{TOKEN}.txt", "x")  # a credential-looking name: left out, but its name is never shown
    _write(root, "corrupt.gz", b"\x1f\x8b\x08\x00garbage, not deflate data")  # (d)
    _write(root, "truncated.txt.gz", _packed("gz", line.encode() * 50)[:40])
    _write(root, "notes.7z", b"7z\xbc\xaf\x27\x1c" + bytes(40))  # a format the standard library cannot open
    _write(root, "nested.zip", _packed("zip", _packed("gz", line.encode("utf-16")), name=f"{KEY}/log.txt.gz"))
    _write(root, "logs.tar.gz", _packed("gz", _packed("tar", line.encode("utf-16-le"), name=f"logs/{TOKEN}.txt")))
    _write(root, "log.bz2", _packed("bz2", line.encode()))
    _write(root, "log.xz", _packed("xz", line.encode("utf-32-be")))
    _write(root, "clean.txt.gz", _packed("gz", b"loss 2.5\n"))
    return root


def test_bundle_never_carries_a_secret_value(secrets_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        zip_path = bundle(secrets_folder)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        members = {name: archive.read(name) for name in names}
    _assert_no_secret([zip_path.read_bytes(), *(name.encode() for name in names)])
    for data in members.values():
        _assert_no_secret(_unpacked(data))
    messages = [str(w.message) for w in caught if issubclass(w.category, ColabHelpersWarning)]
    _assert_no_secret([text.encode() for text in (*messages, caplog.text)])  # warnings and logs name no secret

    assert names == [
        "run/REDACTED.log",  # renamed, content kept
        "run/by-key/REDACTED/metrics.json",
        "run/clean.txt.gz",
        "run/latin1.txt",
        "run/log.bz2",
        "run/log.txt.gz",
        "run/log.xz",
        "run/logs.tar.gz",
        "run/nested.zip",
        "run/utf16-bom.txt",
        "run/utf16be.txt",
        "run/utf32.log",
    ]
    import gzip
    import lzma

    redacted = "login *** wandb *** café\n"
    assert gzip.decompress(members["run/log.txt.gz"]).decode() == redacted
    assert members["run/utf16-bom.txt"] == redacted.encode("utf-16")  # same encoding, byte-order mark kept
    assert members["run/utf16be.txt"] == redacted.encode("utf-16-be")
    assert members["run/utf32.log"] == redacted.encode("utf-32")
    assert members["run/latin1.txt"] == redacted.encode("latin-1")
    assert lzma.decompress(members["run/log.xz"]) == redacted.encode("utf-32-be")
    assert members["run/clean.txt.gz"] == (secrets_folder / "clean.txt.gz").read_bytes()  # untouched
    assert members["run/REDACTED.log"] == b"step 1\n"
    assert b"REDACTED/log.txt.gz" in b"".join(_unpacked(members["run/nested.zip"]))
    assert b"logs/REDACTED.txt" in b"".join(_unpacked(members["run/logs.tar.gz"]))

    # One warning per reason; every left-out file named in exactly one of them.
    assert len(messages) == 2
    credentials, unchecked = messages
    assert "may hold credentials: REDACTED.txt" in credentials
    assert "cannot check for secret values" in unchecked and "store them as text" in unchecked
    for name in ("run/corrupt.gz (corrupt gzip", "run/truncated.txt.gz (corrupt gzip", "run/notes.7z (7z data"):
        assert name in unchecked and name not in credentials


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "latin-1", "cp1252"]
)
@pytest.mark.parametrize("packing", ["plain", "gz", "bz2", "xz", "zip", "tar"])
def test_scrub_bytes_redacts_in_the_files_own_encoding_and_packing(
    encoding: str, packing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colab_helpers.runtime.secrets import scrub_bytes

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    text = f"step 1 loss 2.5 naïve €\nhf login {TOKEN}\n" if encoding != "latin-1" else f"naïve {TOKEN}\n"
    data = text.encode(encoding)
    if packing != "plain":
        data = _packed(packing, data)
    cleaned = scrub_bytes(data, "file.txt" if packing == "plain" else f"file.{packing}")
    _assert_no_secret(_unpacked(cleaned))
    inner = _unpacked(cleaned)[-1]  # the text inside
    assert inner.decode(encoding) == text.replace(TOKEN, "***")


def test_scrub_bytes_refuses_what_it_cannot_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.runtime.secrets import SecretCheckError, contains_secret, scrub_bytes

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    assert scrub_bytes(png, "plot.png") is png  # binary without a secret: kept as it is
    for data, name, found in [
        (png + TOKEN.encode("utf-16-le") + bytes(8), "plot.png", True),  # a secret in binary data
        (b"\x1f\x8b\x08\x00broken", "log.gz", False),
        (b"plain text, named as if gzip", "log.gz", False),
        (b"\x28\xb5\x2f\xfd" + bytes(20), "log.dat", False),  # zstd, found by its first bytes
        (b"anything", "archive.rar", False),
    ]:
        with pytest.raises(SecretCheckError) as raised:
            scrub_bytes(data, name)
        assert raised.value.found is found, name
    assert contains_secret(f"x {TOKEN}".encode("utf-16")) and contains_secret(TOKEN.encode("utf-32-be"))
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("colab_helpers.runtime.secrets.secret_values", lambda: [])
    assert scrub_bytes(b"\x1f\x8b\x08\x00broken", "log.gz") == b"\x1f\x8b\x08\x00broken"  # nothing to look for


@pytest.mark.filterwarnings("ignore:bundle left out:colab_helpers.errors.ColabHelpersWarning")
def test_folder_named_after_a_secret_gives_a_redacted_bundle_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    root = tmp_path / f"run-{KEY}"
    _write(root, "metrics.json", "{}")
    zip_path = bundle(root)
    assert zip_path == root / "run-REDACTED-bundle.zip"
    assert _names(zip_path) == ["run-REDACTED/metrics.json"]


def test_bundle_into_an_unwritable_folder_names_the_zip(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Works as root too: a path below a regular file can never be created.
    _write(tmp_path, "file", "x")
    target = tmp_path / "file" / "out" / "run.zip"

    def no_work(*args: Any) -> None:
        raise AssertionError("bundle started zipping before checking where the zip goes")

    monkeypatch.setattr(downloads, "_add", no_work)
    with pytest.raises(PermissionError, match="pass a folder you can write to") as raised:
        bundle(results, output=target)
    message = str(raised.value)
    assert repr(str(target)) in message and "is a file, not a folder" in message and ".tmp" not in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_bundle_into_a_read_only_results_folder(results: Path) -> None:
    results.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"run-1-bundle\.zip'.*not writable.*pass a folder you can write"):
            bundle(results)
    finally:
        results.chmod(0o700)
    assert not list(results.glob("*.zip"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_download_of_a_read_only_folder_says_how_to_bundle_elsewhere(results: Path) -> None:
    results.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"run-1-bundle\.zip'.*download\(bundle\(.*output="):
            download(results)
    finally:
        results.chmod(0o700)


def test_weights_holding_a_secret_stay_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.runtime.secrets import file_contains_secret

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = tmp_path / "run"
    _write(root, "model/model.safetensors", bytes(64))
    args = _write(root, "checkpoint-10/training_args.bin", b"\x80\x04pickle hub_token " + TOKEN.encode() + b"\x00")
    with pytest.warns(ColabHelpersWarning, match=r"may hold credentials: run/checkpoint-10/training_args\.bin$"):
        zip_path = bundle(root, include_weights=True)
    assert _names(zip_path) == ["run/model/model.safetensors"]
    big = _write(tmp_path, "big.bin", bytes(100) + TOKEN.encode("utf-16-le") + bytes(100))
    assert file_contains_secret(big, chunk_bytes=64)  # found across chunk borders too
    assert file_contains_secret(args) and not file_contains_secret(root / "model/model.safetensors")
