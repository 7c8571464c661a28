"""Run tracking: one directory and one ``runs.csv`` row per run, safe with several processes writing at once.

:class:`RunManager` starts runs, records metrics, ends them and resumes a sweep (``start_or_skip``); :class:`Run` is
one started run. The file, its lock and reading it back are :mod:`.runs_table`'s, ids and config fingerprints
:mod:`.run_ids`', the optional W&B / TensorBoard mirrors :mod:`.mirrors`'. The layout on disk and the columns of
``runs.csv``: docs/architecture.md ("Runs on disk").

    manager = RunManager("results")
    with manager.new_run(config, sweep="lr_sweep") as run:
        run.update_metrics({"final_valid_loss": 3.2})
    manager.runs(sweep="lr_sweep")        # pandas DataFrame (read_runs(root) without a manager)
"""

from __future__ import annotations

import logging
import shutil
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.files import atomic_write_text, ensure_writable_dir
from ..runtime.records import to_jsonable
from ..runtime.secrets import redact
from .mirrors import MIRRORS, Mirrors
from .run_ids import RUN_ID, check_run_id, claim_run_dir, config_hash
from .runs_table import (
    CORE_COLUMNS,
    CSV_NAME,
    find_row,
    flatten,
    format_value,
    merge_cells,
    parse_value,
    read_runs,
    read_table,
    update_table,
)

if TYPE_CHECKING:  # pragma: no cover
    import os

    import pandas

logger = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("running", "done", "failed", "skipped")
FINAL_STATUSES: tuple[str, ...] = ("done", "failed", "skipped")
MAX_ERROR_CHARS = 500  # the runs.csv cell; error.txt keeps the whole text

_env_summary: str | None = None


def _iso(moment: datetime) -> str:
    """``2026-11-23T00:35:12.345Z``: sortable as text."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Return ``text`` on one line, whitespace collapsed, cut to ``limit`` characters (ending in ``...``)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _config_cells(config: Mapping[str, Any]) -> dict[str, str]:
    """Return the runs.csv cells of ``config``: flattened keys (``config.<key>`` for a core column name) -> text."""
    return {
        f"config.{key}" if key in CORE_COLUMNS else key: redact(format_value(value))
        for key, value in flatten(to_jsonable(config, keep_nonfinite=True)).items()
    }


def _environment_summary() -> str:
    """Return the one-line environment summary, computed once per process; ``""`` when detection fails."""
    global _env_summary
    if _env_summary is None:
        try:
            from ..runtime.environment import detect_environment

            _env_summary = redact(detect_environment(check_hub=False).summary())
        except Exception as exc:  # tracking must never fail because of the environment probe
            logger.warning("could not detect the environment for runs.csv: %s", redact(str(exc)))
            _env_summary = ""
    return _env_summary


def _package_version() -> str:
    from .._version import __version__

    return __version__


# --- runs --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run started by ``RunManager.new_run``: its id, directory and config, plus shortcuts to the manager.

    As a context manager it finishes the run ``done`` on a normal exit and ``failed`` (with the error) when an
    exception escapes, which is re-raised.
    """

    run_id: str
    path: Path
    config: dict[str, Any]
    sweep: str | None
    manager: RunManager = field(repr=False)

    def update_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into this run's row (see ``RunManager.update_metrics``)."""
        self.manager.update_metrics(self.run_id, metrics)

    def log(self, **metrics: Any) -> None:
        """``run.log(loss=1.2, step=10)``: keyword form of ``update_metrics``."""
        self.manager.update_metrics(self.run_id, metrics)

    def finish(self, status: str = "done", error: BaseException | str | None = None) -> None:
        """Record the end of this run (see ``RunManager.finish``)."""
        self.manager.finish(self.run_id, status=status, error=error)

    def save_gradients(self, model: Any, step: int, *, full: bool = False) -> Path:
        """Save this run's gradients at ``step`` (see ``RunManager.save_gradients``); return the file."""
        return self.manager.save_gradients(self.run_id, model, step, full=full)

    @property
    def status(self) -> str:
        """The status now recorded in runs.csv."""
        return str(self.manager.get(self.run_id)["status"])

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.status != "running":  # finished (or skipped) explicitly inside the block
            return
        if exc is None:
            self.finish("done")
        else:
            self.finish("failed", error=exc)


@dataclass(frozen=True)
class RunStart:
    """What ``RunManager.start_or_skip`` did: started ``run`` (new or restarted), or skipped a run already done.

    ``run`` is the started run (status ``running``), None when skipped; ``row`` is the done run's row (as ``get``
    returns it: metrics included), None when started.
    """

    run: Run | None
    row: dict[str, Any] | None = None

    @property
    def skipped(self) -> bool:
        """True when the config had a ``done`` run, so nothing was started."""
        return self.run is None

    @property
    def run_id(self) -> str:
        """The id of the started run, or of the done one."""
        return self.run.run_id if self.run is not None else str(self.row["run_id"])  # type: ignore[index]


class RunManager:
    """Create runs under ``root``, record their config, status and metrics in ``root/runs.csv``.

    ``mirror="wandb"`` or ``"tensorboard"`` also sends each run's config and metrics there, when the package
    (and for W&B the ``WANDB_API_KEY``) is present; otherwise one ``ColabHelpersWarning`` and tracking goes on
    without it. ``record_environment=False`` skips the environment summary (which imports torch).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "results",
        *,
        mirror: str | None = None,
        project: str = "colab-helpers",
        record_environment: bool = True,
    ) -> None:
        if mirror not in MIRRORS:
            raise ValueError(f"mirror must be one of {list(MIRRORS)}, got {mirror!r}; use mirror=None to turn it off")
        self.root = ensure_writable_dir(root)
        (self.root / "runs").mkdir(exist_ok=True)
        self.project = project
        self.record_environment = record_environment
        self._mirrors = Mirrors(mirror, project)
        self._warned_lock = False
        self._config_columns: dict[str, frozenset[str]] = {}  # run id -> its config's columns (metrics may not take them)

    def __repr__(self) -> str:
        return f"RunManager({str(self.root)!r}, mirror={self.mirror!r})"

    @property
    def mirror(self) -> str | None:
        """The mirror runs are sent to (``wandb`` or ``tensorboard``), None when off or turned off by a failure."""
        return self._mirrors.kind

    @property
    def csv_path(self) -> Path:
        """``root/runs.csv``."""
        return self.root / CSV_NAME

    # -- writing --------------------------------------------------------------------------------------------

    def _mutate(self, change: Callable[[list[str], list[dict[str, str]]], None]) -> None:
        """Apply ``change(header, rows)`` to runs.csv under its lock (:func:`~.runs_table.update_table`)."""
        problem = update_table(self.root, change)
        if problem is not None and not self._warned_lock:
            self._warned_lock = True
            warnings.warn(
                f"file locking is not available for {self.root} ({problem}); runs.csv is still written "
                "atomically, but several processes writing at once may lose updates",
                ColabHelpersWarning,
                stacklevel=4,
            )

    def new_run(self, config: Mapping[str, Any], sweep: str | None = None, run_id: str | None = None) -> Run:
        """Start a run of ``config``: create ``root/runs/<run_id>/config.yaml`` and a ``running`` row; return it.

        ``run_id=None`` generates a sortable, unique id. Passing the id of an existing run restarts it (resume
        after a failure): its row is replaced by a fresh ``running`` one and its config.yaml rewritten.
        """
        import yaml

        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}; load YAML with load_config(path)")
        if sweep is not None and (not isinstance(sweep, str) or not sweep.strip()):
            raise ValueError(f"sweep must be a non-empty name or None, got {sweep!r}")
        plain = to_jsonable(config, keep_nonfinite=True)
        generated = run_id is None
        if run_id is None:
            run_id, path = claim_run_dir(self.root / "runs")
        else:
            path = self.root / "runs" / check_run_id(run_id)
            path.mkdir(exist_ok=True)
        atomic_write_text(path / "config.yaml", redact(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)))
        (path / "error.txt").unlink(missing_ok=True)

        config_cells = _config_cells(plain)
        cells = {
            "run_id": run_id,
            "sweep": sweep or "",
            "status": "running",
            "started_at": _iso(datetime.now(UTC)),
            "ended_at": "",
            "duration_s": "",
            "error": "",
            "config_hash": config_hash(plain),
            "env": _environment_summary() if self.record_environment else "",
            "version": _package_version(),
        }
        cells.update(config_cells)

        def change(header: list[str], rows: list[dict[str, str]]) -> None:
            fresh: dict[str, str] = {}
            merge_cells(header, fresh, cells)
            for index, row in enumerate(rows):
                if row["run_id"] == run_id:
                    rows[index] = fresh
                    return
            rows.append(fresh)

        try:
            self._mutate(change)
        except BaseException:
            if generated:  # a broken runs.csv (or a kill): leave no orphan directory behind
                shutil.rmtree(path, ignore_errors=True)
            raise
        self._config_columns[run_id] = frozenset(config_cells)
        logger.info("started run %s%s", run_id, f" (sweep {sweep})" if sweep else "")
        self._mirrors.start(run_id, plain, sweep, path)
        return Run(run_id=run_id, path=path, config=plain, sweep=sweep, manager=self)

    def update_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into the row of ``run_id``: a new key becomes a new column; ``None`` clears a cell.

        Nested dicts are flattened with dots. Works at any status (e.g. an evaluation after the run ended).
        """
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}; e.g. {{'eval_loss': 3.2}}")
        flat = flatten({str(key): value for key, value in metrics.items()})
        reserved = sorted(set(flat) & set(CORE_COLUMNS))
        if reserved:
            raise ValueError(
                f"metric name(s) {reserved} are runs.csv columns kept by the tracker; rename them, "
                f"e.g. {{'metric_{reserved[0]}': ...}}"
            )
        taken = sorted(set(flat) & self._run_config_columns(run_id))
        if taken:
            raise ValueError(
                f"metric name(s) {taken} are config keys of run {run_id!r}: runs.csv keeps config and metrics in one "
                f"row, so the metric would overwrite the config value; name the metric after what it measures, "
                f"e.g. {{'final_{taken[0]}': ...}}"
            )
        cells = {key: redact(format_value(value)) for key, value in flat.items()}

        def change(header: list[str], rows: list[dict[str, str]]) -> None:
            merge_cells(header, find_row(rows, run_id, self.csv_path), cells)

        self._mutate(change)
        self._mirrors.log(run_id, flat)

    def _run_config_columns(self, run_id: str) -> frozenset[str]:
        """Return the runs.csv columns of ``run_id``'s config (from this manager's memory, else its config.yaml).

        An unknown run gives no columns (the row lookup then says so); a run whose config.yaml is missing or
        unreadable gives none either, with one ``ColabHelpersWarning``: its metrics cannot be checked against it.
        """
        if run_id in self._config_columns:
            return self._config_columns[run_id]
        if not isinstance(run_id, str) or not RUN_ID.match(run_id) or not (self.root / "runs" / run_id).is_dir():
            return frozenset()
        import yaml

        path = self.root / "runs" / run_id / "config.yaml"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(config, Mapping):
                raise ValueError("not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            warnings.warn(
                f"could not read the config of run {run_id!r} from {str(path)!r} ({type(exc).__name__}: {exc}); "
                "its metrics are not checked against its config keys, so a metric named like one replaces it",
                ColabHelpersWarning,
                stacklevel=3,
            )
            config = {}
        columns = frozenset(_config_cells(config))
        self._config_columns[run_id] = columns
        return columns

    def finish(self, run_id: str, status: str = "done", error: BaseException | str | None = None) -> None:
        """Record the end of ``run_id``: status (``done``, ``failed`` or ``skipped``), end time, duration, error.

        The error goes into the row redacted and cut to one line of 500 characters; the whole text (with the
        traceback of an exception) into ``error.txt`` in the run directory. Only a ``running`` run can finish.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {list(FINAL_STATUSES)}, got {status!r}")
        full_error = ""
        if isinstance(error, BaseException):
            full_error = "".join(traceback.format_exception(error))
            summary = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        else:
            full_error = summary = error or ""
        summary = redact(_one_line(redact(summary)))  # redact before and after cutting: no half secret survives
        ended = datetime.now(UTC)

        def change(header: list[str], rows: list[dict[str, str]]) -> None:
            row = find_row(rows, run_id, self.csv_path)
            if row.get("status") != "running":
                raise ValueError(
                    f"run {run_id!r} is already {row.get('status')!r}, only a running run can finish; "
                    f"to redo it, start it again with new_run(config, run_id={run_id!r})"
                )
            duration = ""
            try:
                started = datetime.fromisoformat(row["started_at"])
                duration = f"{(ended - started).total_seconds():.3f}"
            except (KeyError, ValueError):
                logger.warning("run %s has no readable started_at; duration left empty", run_id)
            cells = {"status": status, "ended_at": _iso(ended), "duration_s": duration, "error": summary}
            merge_cells(header, row, cells)

        self._mutate(change)
        if full_error:
            atomic_write_text(self.root / "runs" / run_id / "error.txt", redact(full_error) + "\n")
        logger.info("run %s %s", run_id, status)
        self._mirrors.finish(run_id, status)

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any]:
        """Return the row of ``run_id`` as a dict (numbers and booleans parsed; empty cells left out)."""
        _, rows = read_table(self.csv_path)
        row = find_row(rows, run_id, self.csv_path)
        parsed = {name: parse_value(text) for name, text in row.items() if text != "" or name in CORE_COLUMNS}
        for name in ("run_id", "sweep", "status"):  # ids and names stay text even when they look like numbers
            parsed[name] = row.get(name) or None
        return parsed

    def runs(self, sweep: str | None = None) -> pandas.DataFrame:
        """Return all runs (or those of ``sweep``) as a pandas DataFrame, one row per run."""
        if not self.csv_path.exists():
            import pandas as pd

            return pd.DataFrame(columns=list(CORE_COLUMNS))
        return read_runs(self.csv_path, sweep=sweep)

    def find(self, config: Mapping[str, Any], sweep: str | None = None) -> str | None:
        """Return the id of a run of ``sweep`` with the same config fingerprint, or None.

        A ``done`` run is preferred, then the latest one. To resume a sweep, ``start_or_skip`` skips ``done`` runs
        and restarts ``running`` or ``failed`` ones with ``new_run(..., run_id=id)``.
        """
        wanted = config_hash(config)
        _, rows = read_table(self.csv_path)
        matches = [row for row in rows if row.get("config_hash") == wanted and row.get("sweep", "") == (sweep or "")]
        if not matches:
            return None
        done = [row for row in matches if row.get("status") == "done"]
        return max(done or matches, key=lambda row: row["run_id"])["run_id"]

    def start_or_skip(self, config: Mapping[str, Any], sweep: str | None = None) -> RunStart:
        """Resume ``config`` in ``sweep``: skip it when a run of it is ``done``, else start it; say which.

        A ``running`` (interrupted) or ``failed`` run of the same config is restarted under its own id (see
        ``find`` and ``new_run(..., run_id=...)``); a config never run starts a new run. A skipped run's row
        (with its metrics) comes back in ``RunStart.row``.
        """
        existing = self.find(config, sweep)
        if existing is not None:
            row = self.get(existing)
            if row.get("status") == "done":
                logger.info("run %s is done already; skipped", existing)
                return RunStart(run=None, row=row)
        return RunStart(run=self.new_run(config, sweep=sweep, run_id=existing))

    def run_dir(self, run_id: str) -> Path:
        """Return ``root/runs/<run_id>``; ``KeyError`` when that run directory does not exist."""
        path = self.root / "runs" / check_run_id(run_id)
        if not path.is_dir():
            raise KeyError(f"no run directory {str(path)!r}; RunManager(root).runs() lists the runs of this root")
        return path

    # -- gradients ------------------------------------------------------------------------------------------

    def save_gradients(self, run_id: str, model: Any, step: int, *, full: bool = False) -> Path:
        """Save the gradients of ``model`` at ``step`` to ``runs/<run_id>/gradients/step_<step>.safetensors``.

        By default one L2 norm per parameter (a few KB); ``full=True`` keeps every gradient tensor (as big as
        the trainable parameters). ``model`` is a torch module after ``backward()`` or a dict name -> gradient.
        Returns the file written.
        """
        from ..finetune.gradients import save_gradients

        return save_gradients(self.run_dir(run_id) / "gradients", model, step, full=full)


__all__ = ["FINAL_STATUSES", "MAX_ERROR_CHARS", "STATUSES", "Run", "RunManager", "RunStart"]
