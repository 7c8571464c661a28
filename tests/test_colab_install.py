"""The way into Colab: every notebook's install cell run against a fake Colab runtime, the one repository URL
(pyproject.toml's [project.urls]) in every cell and in the README's Colab links, and `make colab-bundle`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]["Repository"]
# What pip printed when the repository could not be reached (a real run, offline).
UNREACHABLE = """\
  error: subprocess-exited-with-error

  × git clone --filter=blob:none --quiet https://github.com/colab-helpers/colab-helpers /tmp/pip-install-x did not run successfully.
  │ exit code: 128
  ╰─> [1 lines of output]
      fatal: unable to access 'https://github.com/colab-helpers/colab-helpers/': Could not resolve host: github.com
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
"""


def _script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_cell(notebook: Path) -> str:
    """The source of ``notebook``'s install cell, as Colab runs it (from the .ipynb)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    return next(source for source in sources if "COLAB_RELEASE_TAG" in source)


class FakePip:
    """Stands in for ``subprocess.run``: records each command and answers with ``returncode`` and ``stderr``."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.returncode, self.stderr = returncode, stderr
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


@pytest.fixture(params=NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def install(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[FakePip], None]:
    """Each notebook's install function (its cell executed, not run: ``__name__`` is not ``__main__``), bound to
    a fake ``/content`` in ``tmp_path`` and the notebook's own ``REPO_URL``."""
    namespace: dict[str, Any] = {"__name__": "install_cell"}
    exec(compile(_install_cell(request.param), f"{request.param.name}:install", "exec"), namespace)
    return lambda pip: namespace["_install_colab_helpers"](namespace["REPO_URL"], content=str(tmp_path), run=pip)


@pytest.fixture
def colab(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh Colab runtime: COLAB_RELEASE_TAG set, colab_helpers not importable, no GPU."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    monkeypatch.setitem(sys.modules, "colab_helpers", None)  # find_spec() -> None, as before the install
    monkeypatch.setattr(shutil, "which", lambda name: None)


def _requirement(command: list[str]) -> str:
    assert command[:4] == [sys.executable, "-m", "pip", "install"], command
    assert not {"-U", "--upgrade", "--force-reinstall", "--ignore-installed"} & set(command), command
    assert not any(re.match(r"torch\b", arg) for arg in command), f"torch must never be installed: {command}"
    return command[-1]


@pytest.mark.usefixtures("colab")
def test_unreachable_repository_stops_with_the_url_and_the_fix(install: Callable[[FakePip], None]) -> None:
    pip = FakePip(returncode=1, stderr=UNREACHABLE)
    with pytest.raises(SystemExit) as stop:
        install(pip)
    message = str(stop.value)
    assert _requirement(pip.commands[0]) == f"colab-helpers[eval,serve] @ git+{REPO_URL}"
    assert f"git+{REPO_URL}" in message and "Could not resolve host: github.com" in message
    assert "make colab-bundle" in message and "/content" in message and "REPO_URL" in message and "make sync" in message
    assert "\n" not in message


@pytest.mark.usefixtures("colab")
def test_an_uploaded_wheel_is_installed_and_torch_is_held(install: Callable[[FakePip], None], tmp_path: Path) -> None:
    wheel = tmp_path / "colab_helpers-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    pip = FakePip()
    install(pip)
    [command] = pip.commands
    assert _requirement(command) == f"colab-helpers[eval,serve] @ {wheel.as_uri()}"
    if importlib.util.find_spec("torch") is not None:  # held at the installed build by a constraints file
        constraints = Path(command[command.index("-c") + 1])
        assert constraints.read_text() == f"torch=={importlib.metadata.version('torch')}\n"


@pytest.mark.usefixtures("colab")
def test_a_wheel_on_drive_with_a_gpu_gets_the_gpu_extra(
    install: Callable[[FakePip], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = tmp_path / "drive" / "MyDrive" / "colab-helpers"
    drive.mkdir(parents=True)
    wheel = drive / "colab_helpers-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    pip = FakePip()
    install(pip)
    assert _requirement(pip.commands[0]) == f"colab-helpers[eval,serve,gpu] @ {wheel.as_uri()}"


@pytest.mark.usefixtures("colab")
def test_a_token_never_shows_in_the_message(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "install_cell"}
    exec(_install_cell(NOTEBOOKS[0]), namespace)
    pip = FakePip(returncode=1, stderr="fatal: Authentication failed for 'https://ghp_SECRET@github.com/o/r/'")
    with pytest.raises(SystemExit) as stop:
        namespace["_install_colab_helpers"]("https://ghp_SECRET@github.com/o/r", content=str(tmp_path), run=pip)
    assert "ghp_SECRET" not in str(stop.value) and "https://***@github.com/o/r" in str(stop.value)


def test_nothing_happens_outside_colab(install: Callable[[FakePip], None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setitem(sys.modules, "colab_helpers", None)
    pip = FakePip()
    install(pip)
    assert pip.commands == []


def test_nothing_happens_when_already_installed(
    install: Callable[[FakePip], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    assert importlib.util.find_spec("colab_helpers") is not None  # installed in this environment
    pip = FakePip()
    install(pip)
    assert pip.commands == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_install_cell_is_the_template_with_the_pyproject_url(notebook: Path) -> None:
    expected = _script("sync_notebooks").install_cell(REPO_URL)
    assert _install_cell(notebook).strip() == expected.strip(), f"{notebook.name}: run `make sync`"
    assert f"REPO_URL = {json.dumps(REPO_URL)}" in expected


def test_project_urls_are_built_from_the_repository() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert REPO_URL == "https://github.com/colab-helpers/colab-helpers"
    assert {"Homepage", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith(REPO_URL) for url in urls.values()), urls


def test_readme_colab_links_match_the_repository_and_list_every_notebook() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\(https://colab\.research\.google\.com/github/([^)\s]+)\)", readme)
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    assert sorted(links) == [f"{owner_repo}/blob/main/notebooks/{path.name}" for path in NOTEBOOKS]
    sync = _script("sync_notebooks")
    table = sync.colab_table(REPO_URL, sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")))
    assert f"{sync.LINKS_START}\n{table}\n{sync.LINKS_END}" in readme, "README's Colab table is stale: run `make sync`"


def test_colab_bundle_holds_the_wheel_and_the_notebooks(tmp_path: Path) -> None:
    output = tmp_path / "dist" / "colab-helpers-colab.zip"
    assert _script("colab_bundle").main(["--output", str(output)]) == 0
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
        [wheel] = [name for name in names if name.endswith(".whl")]
        assert re.fullmatch(r"colab-helpers/colab_helpers-[^/]+-py3-none-any\.whl", wheel)
        notebooks = sorted(name for name in names if name.endswith(".ipynb"))
        assert notebooks == [f"colab-helpers/notebooks/{path.name}" for path in NOTEBOOKS]
        assert "colab-helpers/README.txt" in names and "/content" in archive.read("colab-helpers/README.txt").decode()
        with zipfile.ZipFile(archive.open(wheel)) as inner:
            assert "colab_helpers/__init__.py" in inner.namelist()
    written = sorted(path.name for path in output.parent.iterdir())
    assert written == sorted([output.name, Path(wheel).name])  # the zip and the wheel, no temporary file left
