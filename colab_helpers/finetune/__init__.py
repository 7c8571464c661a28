"""LoRA fine-tuning that survives Colab: NaNs, out-of-memory, CUDA failures and disconnects.

    result = fine_tune(model, tokenizer, data.train, data.validation, FineTuneConfig(max_steps=200))
    result.history_frame()          # one row per step, eval metrics merged in
    save_merged(result.model, tokenizer, "merged")
    distill(model, teacher, tokenizer, data.train, config=FineTuneConfig(), distill_config=DistillConfig(top_k=64))

Stage 3 of the pipeline. Modules: :mod:`.config` (settings; ``with_intervals`` paces evaluation, checkpoints
and warm-up), :mod:`.trainer` (the guarded loop), :mod:`.state` (the resumable counters), :mod:`.guard` (NaN skip,
rollback, LR and micro-batch halving, CPU fallback), :mod:`.device` (autocast, inputs, moving a run to the CPU),
:mod:`.evaluator` (eval loss, best weights, early stopping), :mod:`.blocks` (tokenised training data,
micro-batches), :mod:`.completions` (prompt -> completion pairs, loss on the completion only), :mod:`.result`
(what a run returns), :mod:`.checkpoint` (atomic checkpoints), :mod:`.resume` (the checkpoint a run continues
from; unreadable ones moved aside), :mod:`.outputs` (the output folder, the final adapter or model, the summary),
:mod:`.trainable` (LoRA attached, or every weight with ``method="full"``), :mod:`.lora` (targets, backend,
precision, gates), :mod:`.distributed` (several processes, one run), :mod:`.callbacks` (live plot, progress bar,
gradient files), :mod:`.gradients` (gradient norms saved, read, drawn), :mod:`.export` (adapter and merged
model), :mod:`.distill` (knowledge distillation from a teacher through the same loop), :mod:`.teacher_cache` (the
teacher's top-k logits computed once, on disk), :mod:`.teacher_text` (recovery text: the dataset, text the teacher
writes, or both), :mod:`.recipes` (teacher correction; compression in rounds with distillation between). torch and peft are imported only when training starts.
"""

from __future__ import annotations

from .callbacks import Callback, LivePlotCallback, ProgressCallback
from .checkpoint import latest_checkpoint, list_checkpoints
from .config import FineTuneConfig
from .distill import DistillConfig, distill
from .export import merge_adapter, save_adapter, save_merged
from .recipes import compress_iteratively, correct_teacher
from .result import FineTuneResult
from .teacher_text import RECOVERY_TEXTS, recovery_texts, teacher_texts
from .trainer import FineTuner, fine_tune

__all__ = [
    "Callback",
    "DistillConfig",
    "FineTuneConfig",
    "FineTuneResult",
    "FineTuner",
    "LivePlotCallback",
    "RECOVERY_TEXTS",
    "compress_iteratively",
    "correct_teacher",
    "ProgressCallback",
    "distill",
    "fine_tune",
    "latest_checkpoint",
    "list_checkpoints",
    "merge_adapter",
    "recovery_texts",
    "save_adapter",
    "save_merged",
    "teacher_texts",
]
