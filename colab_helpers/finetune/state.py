"""The resumable state of a training run: :class:`TrainingState` holds every counter a checkpoint saves and a resume
restores (its dataclass fields are the one list of them), and the run's clock. Tensors are :mod:`.checkpoint`'s."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

_NOT_SAVED = {"saved": False}  # field metadata: runtime-only, not written to a checkpoint


@dataclass
class TrainingState:
    """The counters of a run that go into ``state.json`` of every checkpoint."""

    micro_batch_size: int  # the config's, lowered by out-of-memory and non-finite halvings
    step: int = 0  # last step completed
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per step, eval metrics merged in
    events: list[dict[str, Any]] = field(default_factory=list)  # NaN skips, rollbacks, halvings, fallbacks, stops
    lr_scale: float = 1.0  # halved by each rollback
    nan_streak: int = 0  # non-finite steps in a row
    rollbacks: int = 0
    rolled_back_without_progress: bool = False  # a second rollback before a good step also halves the micro-batch
    best_step: int | None = None
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0  # early stopping's patience counter
    elapsed_seconds: float = 0.0  # training seconds of earlier sessions of this run (the running one: elapsed())
    started: float | None = field(default=None, repr=False, metadata=_NOT_SAVED)  # perf_counter of this session

    def start_clock(self) -> None:
        """Start counting this session's training seconds."""
        self.started = time.perf_counter()

    def stop_clock(self) -> None:
        """Add this session's seconds to ``elapsed_seconds`` and stop counting."""
        self.elapsed_seconds, self.started = self.elapsed(), None

    def elapsed(self) -> float:
        """Return the training seconds of the whole run so far (earlier sessions included)."""
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.elapsed_seconds + running

    def to_dict(self) -> dict[str, Any]:
        """Return the saved counters as JSON data (``elapsed_seconds`` includes the running session)."""
        values = {name: getattr(self, name) for name in _saved_fields()}
        values["elapsed_seconds"] = self.elapsed()
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        """Return the state :meth:`to_dict` wrote (a checkpoint's ``state.json``; extra keys are ignored)."""
        values = {name: data[name] for name in _saved_fields()}
        values["history"], values["events"] = list(values["history"]), list(values["events"])
        return cls(**values)


def _saved_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainingState) if f.metadata.get("saved", True)]
