"""What a fine-tuning run hands back: :class:`FineTuneResult`, the peft model with its per-step history, events,
best evaluation and the paths of the files the run wrote, with a one-line summary and a pandas view. It holds no
training logic; :mod:`.trainer` builds it when :meth:`~colab_helpers.finetune.FineTuner.train` ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FineTuneResult:
    """What a run produced: the peft model, per-step history, events, best evaluation and where files went."""

    # the peft model, adapter attached (the best one when restore_best); with method="full" the model itself
    model: Any = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)  # one dict per step, eval metrics merged into their step
    events: list[dict[str, Any]] = field(repr=False)  # NaN skips, rollbacks, halvings, fallbacks, stops
    best_step: int | None
    best_eval_loss: float | None
    seconds: float  # training time of this call (a resumed run: only the part after the resume)
    steps: int  # last step done
    stopped_reason: str  # "max_steps", "max_minutes", "early_stopping", "non_finite" (see failure), "resumed_finished"
    device: str
    backend: str
    output_dir: Path
    checkpoint_dir: Path | None = None  # newest complete checkpoint
    adapter_dir: Path | None = None  # final adapter (peft format: PeftModel.from_pretrained(base, adapter_dir))
    plot_path: Path | None = None
    world_size: int = 1  # processes that trained together (data-parallel under accelerate launch / torchrun)
    # why the run failed (every step non-finite, or NaN / inf in the weights), None when it did not: a failed run
    # stops with stopped_reason "non_finite", saves no adapter (adapter_dir None) and its model is no result
    failure: str | None = None
    # method="full": the whole trained model (from_pretrained / load_pruned), in place of adapter_dir; None otherwise
    model_dir: Path | None = None

    @property
    def final_loss(self) -> float | None:
        """Return the training loss of the last step that was not skipped (None if none)."""
        losses = [r["loss"] for r in self.history if not r["skipped"]]
        return losses[-1] if losses else None

    def summary(self) -> str:
        """One line: steps, time, device and backend, losses, why it stopped, events."""
        best = f"; best eval loss {self.best_eval_loss:.4f} at step {self.best_step}" if self.best_eval_loss is not None else ""
        final = f"; final train loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        return (
            f"{self.steps} steps in {self.seconds:.1f} s on {self.device}{self._processes()} ({self.backend})"
            f"{final}{best}; "
            f"stopped: {self.stopped_reason}{self._failed()}; {len(self.events)} events (NaN skips, rollbacks, "
            "fallbacks)"
        )

    def raise_if_failed(self) -> FineTuneResult:
        """Return this result, or raise ``RuntimeError`` with :attr:`failure` when the run failed (no finite step, or
        non-finite weights): a caller about to measure or merge ``model`` must not take a broken one as a result."""
        if self.failure:
            raise RuntimeError(f"LoRA fine-tuning failed: {self.failure}; the output folder holds no adapter from it")
        return self

    def _failed(self) -> str:
        return f" (FAILED: {self.failure})" if self.failure else ""

    def _processes(self) -> str:
        return f" x {self.world_size} processes" if self.world_size > 1 else ""

    def _repr_markdown_(self) -> str:
        plot = f" · plot: `{self.plot_path}`" if self.plot_path else ""
        return f"**Fine-tuning** · {self.summary()}{plot}"

    def history_frame(self) -> Any:
        """Return the history as a pandas DataFrame indexed by step."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("step") if self.history else pd.DataFrame()

    def to_dict(self) -> dict[str, Any]:
        """Return everything but the model as JSON-serializable data."""
        return {
            "history": self.history,
            "events": self.events,
            "best_step": self.best_step,
            "best_eval_loss": self.best_eval_loss,
            "seconds": self.seconds,
            "steps": self.steps,
            "stopped_reason": self.stopped_reason,
            "device": self.device,
            "world_size": self.world_size,
            "backend": self.backend,
            "output_dir": str(self.output_dir),
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "plot_path": str(self.plot_path) if self.plot_path else None,
            "failure": self.failure,
        }

    def __str__(self) -> str:
        best = f", best eval loss {self.best_eval_loss:.4f} at step {self.best_step}" if self.best_step else ""
        skipped = sum(1 for r in self.history if r["skipped"])
        return (
            f"{self.steps} steps ({self.stopped_reason}{self._failed()}) in {self.seconds:.1f} s on {self.device}, "
            f"final loss {self.final_loss if self.final_loss is None else round(self.final_loss, 4)}{best}, "
            f"{skipped} skipped, {len(self.events)} events"
        )
