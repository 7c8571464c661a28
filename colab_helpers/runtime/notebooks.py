"""Execute the suite's notebooks headless with papermill: used by the tests and by ``make demo``.

papermill (a development dependency) is imported only when a notebook is executed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .files import ensure_writable_dir
from .kernel import HEADLESS_ENV_VAR

logger = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where it came from, where the executed copy is, how long it took."""

    source: Path
    executed: Path
    results_dir: Path
    seconds: float


def list_notebooks(directory: str | os.PathLike[str] = NOTEBOOK_DIR) -> list[Path]:
    """Return the suite's ``.ipynb`` notebooks in run order (their names start with a number)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"notebook directory {str(directory)!r} does not exist; run from a clone of the repo")
    return sorted(path for path in directory.glob("[0-9][0-9]_*.ipynb"))


@contextmanager
def _kernel_environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables the kernel inherits; an inherited MPLBACKEND=Agg would drop inline figures."""
    saved = dict(os.environ)
    os.environ.pop("MPLBACKEND", None)
    os.environ.update({HEADLESS_ENV_VAR: "1", **overrides})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


SMOKE_CELL_TIMEOUT_S = 900
FULL_CELL_TIMEOUT_S = 3600


def execute_notebook(
    notebook: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    parameters: Mapping[str, Any] | None = None,
    smoke: bool = False,
    timeout: int | None = None,
    env: Mapping[str, str] | None = None,
) -> NotebookRun:
    """Execute ``notebook`` with papermill; return the run with the executed copy under ``output_dir``.

    The notebook's own results go to ``output_dir/<notebook stem>`` (its ``RESULTS_DIR`` parameter). ``timeout`` is
    per cell, in seconds: by default 900 in smoke mode (a hang shows fast) and 3600 at full settings, where one cell
    runs a whole pipeline on a real model and a slow or busy machine must not fail it.
    Raises papermill's ``PapermillExecutionError`` when a cell fails.
    """
    import papermill

    source = Path(notebook).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"notebook {str(source)!r} does not exist; pick one of {list_notebooks()}")
    output_root = ensure_writable_dir(output_dir).resolve()
    results_dir = output_root / source.stem
    executed = output_root / "executed" / source.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    params = {"SMOKE": smoke, "RESULTS_DIR": str(results_dir), **(parameters or {})}
    started = time.perf_counter()
    with _kernel_environment(env or {}):
        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters=params,
            kernel_name="python3",
            cwd=str(source.parent.parent),
            progress_bar=False,
            execution_timeout=timeout or (SMOKE_CELL_TIMEOUT_S if smoke else FULL_CELL_TIMEOUT_S),
        )
    return NotebookRun(source, executed, results_dir, time.perf_counter() - started)


def error_outputs(executed: str | os.PathLike[str]) -> list[str]:
    """Return ``ename: evalue`` for every error output in an executed notebook (empty when clean)."""
    notebook = json.loads(Path(executed).read_text(encoding="utf-8"))
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.get("cells", [])
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m colab_helpers.runtime.notebooks --all --output results [--smoke]``."""
    parser = argparse.ArgumentParser(description="Execute the suite's notebooks headless with papermill.")
    parser.add_argument("notebooks", nargs="*", help="notebook paths (default: --all)")
    parser.add_argument("--all", action="store_true", help="every notebook in notebooks/")
    parser.add_argument("--output", default="results", help="where executed notebooks and results go")
    parser.add_argument("--smoke", action="store_true", help="run with SMOKE=True (tiny, seconds)")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help=f"seconds per cell (default {SMOKE_CELL_TIMEOUT_S} with --smoke, else {FULL_CELL_TIMEOUT_S})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = [Path(p) for p in args.notebooks] or (list_notebooks() if args.all else [])
    if not paths:
        parser.error("name notebooks to run, or pass --all")
    failed = False
    for path in paths:
        run = execute_notebook(path, args.output, smoke=args.smoke, timeout=args.cell_timeout)
        errors = error_outputs(run.executed)
        failed |= bool(errors)
        logger.info("%s: %.1f s -> %s%s", path.name, run.seconds, run.executed, f" ERRORS {errors}" if errors else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
