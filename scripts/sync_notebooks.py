"""Write the Colab install cell into every notebook and the "Open in Colab" table into the README, then pair the
notebooks with jupytext, all from one repository URL: pyproject.toml's ``[project.urls] Repository``.

    .venv/bin/python scripts/sync_notebooks.py      # `make sync` runs it

The install cell is scripts/colab_install_cell.py with the URL filled in; it replaces the code cell under each
notebook's "## Install (Colab only)" heading. The README's table sits between two marker comments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
TEMPLATE = ROOT / "scripts" / "colab_install_cell.py"
PLACEHOLDER = '"@REPO_URL@"'
INSTALL_HEADING = "# ## Install (Colab only)"
LINKS_START, LINKS_END = "<!-- colab-links:start -->", "<!-- colab-links:end -->"
BRANCH = "main"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repo_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Return ``[project.urls] Repository`` of ``pyproject``."""
    urls = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("urls", {})
    if not urls.get("Repository"):
        example = 'Repository = "https://github.com/owner/repo"'
        raise ValueError(f"{pyproject} has no [project.urls] Repository; add one, e.g. {example}")
    return urls["Repository"]


def install_cell(url: str) -> str:
    """Return the install cell's source: the template with ``url`` as ``REPO_URL``."""
    template = TEMPLATE.read_text(encoding="utf-8")
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"{TEMPLATE.name} must hold {PLACEHOLDER} exactly once, as the value of REPO_URL")
    return template.replace(PLACEHOLDER, json.dumps(url)).strip() + "\n"


def with_install_cell(script: str, cell: str, name: str = "notebook") -> str:
    """Return py:percent ``script`` with the code cell under the install heading replaced by ``cell``."""
    lines = script.splitlines()
    if INSTALL_HEADING not in lines:
        raise ValueError(f"{name}: no {INSTALL_HEADING!r} markdown cell; add it before the install cell")
    start = next((i for i in range(lines.index(INSTALL_HEADING), len(lines)) if lines[i].startswith("# %%")), None)
    if start is None or lines[start] != "# %%":
        raise ValueError(f"{name}: the cell after {INSTALL_HEADING!r} must be a plain code cell ('# %%')")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    return "\n".join([*lines[: start + 1], *cell.strip().splitlines(), "", *lines[end:]]) + "\n"


def github_path(url: str) -> str:
    """Return ``owner/repo`` of a GitHub repository URL (Colab opens notebooks from GitHub by that path)."""
    parsed = urlparse(url)
    path = parsed.path.strip("/").removesuffix(".git")
    if parsed.hostname != "github.com" or path.count("/") != 1:
        raise ValueError(f"Repository must be https://github.com/owner/repo for Colab links, got {url!r}")
    return path


def colab_link(url: str, notebook: str) -> str:
    """Return the URL that opens ``notebooks/<notebook>.ipynb`` of the repository in Colab."""
    return f"https://colab.research.google.com/github/{github_path(url)}/blob/{BRANCH}/notebooks/{notebook}.ipynb"


def _title(script: Path) -> str:
    """The notebook's title without its number: '# # 05 · Prune, then recover' -> 'Prune, then recover'."""
    heading = next(line for line in script.read_text(encoding="utf-8").splitlines() if line.startswith("# # "))
    return heading.removeprefix("# # ").split("·", 1)[-1].strip()


def colab_table(url: str, scripts: list[Path]) -> str:
    """Return the README's Markdown table: one "Open in Colab" badge per notebook."""
    rows = [f"| `{s.stem}` | {_title(s)} | [![Open In Colab]({BADGE})]({colab_link(url, s.stem)}) |" for s in scripts]
    return "\n".join(["| notebook | title | Colab |", "|---|---|---|", *rows])


def with_colab_table(readme: str, table: str) -> str:
    """Return ``readme`` with the text between the colab-links markers replaced by ``table``."""
    if LINKS_START not in readme or LINKS_END not in readme:
        raise ValueError(f"README.md needs {LINKS_START} and {LINKS_END} around the Colab links")
    head, rest = readme.split(LINKS_START, 1)
    return f"{head}{LINKS_START}\n{table}\n{LINKS_END}{rest.split(LINKS_END, 1)[1]}"


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it holds it already (an unchanged file keeps its time for jupytext)."""
    if path.read_text(encoding="utf-8") == text:
        return False
    from colab_helpers.runtime.files import atomic_write_text

    atomic_write_text(path, text)
    return True


def _pair(scripts: list[Path]) -> None:
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--sync", *map(str, scripts)], check=True)


def main() -> int:
    url = repo_url()
    scripts = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    _pair(scripts)  # first: a notebook edited as .ipynb must reach its .py before the .py is rewritten
    cell = install_cell(url)
    changed = []
    for script in scripts:
        if _write_if_changed(script, with_install_cell(script.read_text(encoding="utf-8"), cell, script.name)):
            changed.append(script.name)
    readme = ROOT / "README.md"
    if _write_if_changed(readme, with_colab_table(readme.read_text(encoding="utf-8"), colab_table(url, scripts))):
        changed.append(readme.name)
    if changed:
        _pair(scripts)
    print(f"REPO_URL = {url}; rewritten: {', '.join(changed) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
