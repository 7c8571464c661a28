"""Mirrors of tracked runs: the config and metrics of each run sent to Weights & Biases or TensorBoard as well.

``runs.csv`` stays the record (:mod:`.tracking`); a mirror is optional. :class:`Mirrors` keeps one per running run
and turns mirroring off with one warning when its package (or for W&B the ``WANDB_API_KEY``) is missing, or when a
mirror fails. Secrets are redacted from everything a mirror sends; W&B reads its key itself, this module never
touches it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checks import is_finite_number
from ..errors import ColabHelpersWarning
from ..runtime.records import to_jsonable
from ..runtime.secrets import redact

MIRRORS: tuple[str | None, ...] = (None, "wandb", "tensorboard")


class Mirror:
    """One run's mirror: ``log`` sends flat metrics, ``finish`` closes it with the run's final status."""

    def log(self, metrics: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self, status: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def check_mirror(kind: str | None) -> str | None:
    """Return ``kind`` when its package (and key) is there; else warn once and return None."""
    if kind is None:
        return None
    problem = ""
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            problem = "the wandb package is not installed (pip install wandb)"
        else:
            if not os.environ.get("WANDB_API_KEY"):
                problem = "WANDB_API_KEY is not set (on Colab, add it as a secret and export it)"
    else:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            problem = "the tensorboard package is not installed (pip install tensorboard)"
    if problem:
        warnings.warn(
            f"mirror={kind!r} is off: {problem}; runs are still tracked in runs.csv", ColabHelpersWarning, stacklevel=3
        )
        return None
    return kind


def start_mirror(kind: str, project: str, run_id: str, config: dict[str, Any], sweep: str | None,
                 path: Path) -> Mirror | None:  # fmt: skip
    """Return the mirror of run ``run_id`` (``kind`` ``"wandb"`` or ``"tensorboard"``); None for another kind."""
    if kind == "wandb":
        return _WandbMirror(project, run_id, config, sweep, path)
    if kind == "tensorboard":
        return _TensorBoardMirror(config, path)
    return None


class Mirrors:
    """The mirrors of one tracker's runs (``kind`` None: none). The first failure warns once and turns them off."""

    def __init__(self, kind: str | None, project: str) -> None:
        self.kind = check_mirror(kind)
        self.project = project
        self._runs: dict[str, Mirror] = {}

    def start(self, run_id: str, config: dict[str, Any], sweep: str | None, path: Path) -> None:
        if self.kind is not None:
            self._call(lambda: self._open(run_id, config, sweep, path))

    def log(self, run_id: str, metrics: dict[str, Any]) -> None:
        mirror = self._runs.get(run_id)
        if mirror is not None:
            self._call(lambda: mirror.log(metrics))

    def finish(self, run_id: str, status: str) -> None:
        mirror = self._runs.pop(run_id, None)
        if mirror is not None:
            self._call(lambda: mirror.finish(status))

    def _open(self, run_id: str, config: dict[str, Any], sweep: str | None, path: Path) -> None:
        mirror = start_mirror(str(self.kind), self.project, run_id, config, sweep, path)
        if mirror is not None:
            self._runs[run_id] = mirror

    def _call(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:
            warnings.warn(
                f"mirroring to {self.kind} failed ({type(exc).__name__}: {redact(str(exc))}); runs are still "
                "tracked in runs.csv, without the mirror",
                ColabHelpersWarning,
                stacklevel=4,
            )
            self.kind = None
            self._runs.clear()


def _redact_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _redact_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_tree(item) for item in value]
    return redact(value) if isinstance(value, str) else value


class _WandbMirror(Mirror):
    """Sends a run to Weights & Biases (``wandb`` reads ``WANDB_API_KEY`` itself; we never touch the key)."""

    def __init__(self, project: str, run_id: str, config: dict[str, Any], sweep: str | None, path: Path) -> None:
        import wandb

        self.run = wandb.init(
            project=project,
            name=run_id,
            id=run_id,
            resume="allow",  # a run restarted with new_run(..., run_id=...) continues the same W&B run
            group=sweep,
            config=_redact_tree(config),
            dir=str(path),
        )

    def log(self, metrics: dict[str, Any]) -> None:
        self.run.log(_redact_tree(to_jsonable(metrics, keep_nonfinite=True)))

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("done", "skipped") else 1)


class _TensorBoardMirror(Mirror):
    """Writes a run's numeric metrics as scalars (and its config as text) under ``<run dir>/tensorboard``."""

    def __init__(self, config: dict[str, Any], path: Path) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path / "tensorboard"))
        self.writer.add_text("config", "```\n" + redact(yaml.safe_dump(config, sort_keys=False)) + "\n```")
        self.step = 0

    def log(self, metrics: dict[str, Any]) -> None:
        step = metrics.get("step")
        step = int(step) if isinstance(step, int | float) and not isinstance(step, bool) else self.step
        for key, value in to_jsonable(metrics, keep_nonfinite=True).items():
            if is_finite_number(value):
                self.writer.add_scalar(key, value, global_step=step)
        self.step = step + 1
        self.writer.flush()

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


__all__ = ["MIRRORS", "Mirror", "Mirrors", "check_mirror", "start_mirror"]
