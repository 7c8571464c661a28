"""Notebook machinery: pairing, the parameters cell, and every notebook executed headless in smoke mode."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

from colab_helpers.runtime.notebooks import NOTEBOOK_DIR, error_outputs, execute_notebook, list_notebooks

NOTEBOOKS = list_notebooks()
FAKE_SECRETS = {"HF_TOKEN": "hf_FAKEsecretVALUE1234567890", "WANDB_API_KEY": "wandbFAKEsecret0987654321"}


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _contents(files: list[Path]) -> list[tuple[str, bytes]]:
    """Every file's bytes, with zip archives opened (their members are compressed)."""
    out = []
    for path in files:
        out.append((str(path), path.read_bytes()))
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                out += [(f"{path}:{name}", archive.read(name)) for name in archive.namelist()]
    return out


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_every_script_has_a_notebook_and_back() -> None:
    scripts = {path.stem for path in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py")}
    notebooks = {path.stem for path in NOTEBOOKS}
    assert scripts == notebooks


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_pair_is_in_sync(notebook: Path) -> None:
    # `jupytext --diff` exits 0 even when the files differ: compare the cells of both files ourselves.
    import jupytext

    def cells(path: Path) -> list[tuple[str, str, list[str]]]:
        return [
            (cell.cell_type, cell.source.strip(), sorted(cell.metadata.get("tags", [])))
            for cell in jupytext.read(path).cells
        ]

    assert cells(notebook) == cells(notebook.with_suffix(".py")), f"{notebook.name} and its .py differ: run `make sync`"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_one_parameters_cell_of_literals(notebook: Path) -> None:
    cells = [cell for cell in _cells(notebook) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: expected exactly one cell tagged 'parameters', got {len(cells)}"
    tree = ast.parse("".join(cells[0]["source"]))
    names = []
    for statement in tree.body:
        assert isinstance(statement, ast.AnnAssign | ast.Assign), f"{notebook.name}: only assignments allowed"
        target = statement.target if isinstance(statement, ast.AnnAssign) else statement.targets[0]
        assert isinstance(target, ast.Name)
        ast.literal_eval(statement.value)  # raises on anything but a literal
        names.append(target.id)
    assert "SMOKE" in names and "RESULTS_DIR" in names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_opens_with_prose_install_then_parameters(notebook: Path) -> None:
    cells = _cells(notebook)
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert "COLAB_RELEASE_TAG" in "".join(code[0]["source"]), "first code cell must be the Colab-only install cell"
    assert "parameters" in code[1].get("metadata", {}).get("tags", [])


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_headless_in_smoke_mode_without_leaking_secrets(notebook: Path, tmp_path: Path) -> None:
    run = execute_notebook(notebook, tmp_path, smoke=True, env=FAKE_SECRETS)
    assert error_outputs(run.executed) == []
    files = [run.executed, *(path for path in run.results_dir.rglob("*") if path.is_file())]
    leaked = [name for name, data in _contents(files) if any(s.encode() in data for s in FAKE_SECRETS.values())]
    assert leaked == []
    assert any(run.results_dir.rglob("*.zip")), "every notebook ends with a download bundle"
