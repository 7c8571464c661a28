"""LoRA fine-tuning that survives Colab: NaNs, out-of-memory, CUDA failures and disconnects.

    result = fine_tune(model, tokenizer, data.train, data.validation, FineTuneConfig(max_steps=200))
    result.history_frame()          # one row per step, eval metrics merged in
    save_merged(result.model, tokenizer, "merged")

Modules: :mod:`.config` (settings), :mod:`.trainer` (the guarded loop), :mod:`.completions` (prompt ->
completion pairs, loss on the completion only), :mod:`.checkpoint` (atomic checkpoints), :mod:`.lora` (targets,
backend, precision, gates), :mod:`.callbacks` (live plot, progress bar), :mod:`.export` (adapter and merged
model). torch and peft are imported only when training starts.
"""

from __future__ import annotations

from .callbacks import Callback, LivePlotCallback, ProgressCallback
from .checkpoint import latest_checkpoint, list_checkpoints
from .config import FineTuneConfig
from .export import merge_adapter, save_adapter, save_merged
from .trainer import FineTuner, FineTuneResult, fine_tune

__all__ = [
    "Callback",
    "FineTuneConfig",
    "FineTuneResult",
    "FineTuner",
    "LivePlotCallback",
    "ProgressCallback",
    "fine_tune",
    "latest_checkpoint",
    "list_checkpoints",
    "merge_adapter",
    "save_adapter",
    "save_merged",
]
