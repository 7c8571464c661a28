"""Build dist/colab-helpers-colab.zip: the package as a wheel, the notebooks, and a README.txt on using them on Colab.

    .venv/bin/python scripts/colab_bundle.py      # `make colab-bundle`; offline, a few seconds

For Colab without access to the repository (a private one): the notebooks' install cell installs a wheel it finds
in /content or in MyDrive/colab-helpers/ (the zip's top folder uploaded to Drive) before it tries the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from colab_helpers.runtime.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "dist" / "colab-helpers-colab.zip"
TOP = "colab-helpers"  # the zip's top folder; on Drive the install cell looks in MyDrive/colab-helpers/

README_TXT = """\
colab-helpers for Google Colab (built by `make colab-bundle`)

This folder holds the package as a wheel, {wheel}, and the notebooks. Each notebook's first
code cell installs the wheel when it finds it, so Colab needs no access to the repository.

On Google Drive (survives runtime resets):
  1. Unzip, and upload this whole folder, colab-helpers, to My Drive: the wheel must end up as
     My Drive/colab-helpers/{wheel}
  2. In Drive, open a notebook from colab-helpers/notebooks/ with Google Colaboratory.
  3. Mount Drive before running the cells: Files pane -> Mount Drive, or run
     from google.colab import drive; drive.mount("/content/drive")
  4. Run all. ON_DRIVE = True (notebooks 04, 05, 06, 08) keeps results and checkpoints on Drive too.

For one session only:
  1. Open a notebook in Colab (File -> Upload notebook, pick it from notebooks/).
  2. Upload {wheel} to /content (Files pane -> Upload; it opens in /content).
  3. Run all. /content is wiped when the runtime is reset: upload the wheel again then.
"""


def build_wheel(out_dir: Path) -> Path:
    """Build the package's wheel into ``out_dir`` from a clean copy of the sources and return its path.

    A copy, because setuptools reuses an existing build/ folder and would pack modules deleted since.
    """
    if importlib.util.find_spec("setuptools") is None:
        raise SystemExit(f"setuptools is missing from {sys.executable}: pip install 'setuptools>=68', then rerun")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "source")
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "colab_helpers", source / "colab_helpers", ignore=skip)
        for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICENSE*")]:
            shutil.copy2(path, source / path.name)
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out_dir)]
        done = subprocess.run([*pip, str(source)], capture_output=True, text=True)  # setuptools' notes are noise here
    if done.returncode != 0:
        raise SystemExit(f"building the wheel failed (pip wheel exit {done.returncode}):\n{done.stderr[-3000:]}")
    return next(out_dir.glob("colab_helpers-*.whl"))


def write_bundle(output: Path, wheel: Path, notebooks: list[Path]) -> Path:
    """Write the zip (a temporary file beside ``output``, renamed at the end) and return ``output``."""
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{TOP}/README.txt", README_TXT.format(wheel=wheel.name))
        archive.write(wheel, f"{TOP}/{wheel.name}", compress_type=zipfile.ZIP_STORED)  # a wheel is a zip already
        for notebook in notebooks:
            archive.write(notebook, f"{TOP}/notebooks/{notebook.name}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the zip; the wheel goes beside it")
    output = parser.parse_args(argv).output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        write_bundle(output, wheel, sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
        with atomic_path(output.parent / wheel.name) as copy:  # also on its own: uploading just the wheel is enough
            shutil.copy2(wheel, copy)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB) and {output.parent / wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
