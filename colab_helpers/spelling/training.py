"""Training of the study's adapters: the model to study, one LoRA run on a copy of it, the control's plain text.

Every adapter goes through the suite's :func:`~colab_helpers.finetune.fine_tune` (unsloth on CUDA where
supported, peft otherwise; checkpoints so a restarted run continues) and is then scored by the study's
evaluation. The untouched model is never trained: each run trains a deep copy. A run trains on (prompt,
answer) pairs (:func:`completion_pairs`), the loss on the answer only, unless its config says
``training.completion_only: false``; the control trains on plain text (:func:`control_texts`).
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OfflineFallbackWarning
from .config import DEFAULT_MODEL, OFFLINE_MODEL, finetune_config
from .evaluation import Evaluation, save_predictions, small_model_threads

if TYPE_CHECKING:  # pragma: no cover
    from ..finetune import FineTuneResult

logger = logging.getLogger(__name__)


def load_study_model(name: str = DEFAULT_MODEL, *, smoke: bool = False,
                     offline_model: str = OFFLINE_MODEL) -> tuple[Any, Any, str]:  # fmt: skip
    """Return ``(model, tokenizer, name loaded)``: ``name``, or the embedded ``offline_model`` in smoke mode or
    when ``name`` cannot be loaded (no hub, not cached; one ``OfflineFallbackWarning`` says why)."""
    from ..models.loading import load_model

    if smoke:
        return (*load_model(offline_model), offline_model)
    try:
        return (*load_model(name), name)
    except (ConnectionError, OSError) as exc:
        warnings.warn(
            f"could not load {name!r} ({type(exc).__name__}: {str(exc)[:200]}); using the embedded offline model "
            f"{offline_model!r} instead: a 1M-parameter toy, so the numbers show the mechanics, not findings",
            OfflineFallbackWarning,
            stacklevel=2,
        )
        return (*load_model(offline_model), offline_model)


def completion_pairs(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Return ``(prompt, completion)`` of each spelling row: the completion is what the row's ``text`` adds to its
    ``prompt``, i.e. the answer as the model should write it (``" a p p l e"`` after ``"Q: ...\\nA:"``, or the
    assistant turn of a chat template)."""
    pairs = []
    for row in rows:
        prompt, text = row["prompt"], row["text"]
        if not text.startswith(prompt):
            raise ValueError(
                f"the row of {row.get('word')!r} ({row.get('task')}) has a text that does not start with its prompt: "
                "rebuild the data with colab_helpers.spelling.data.build_datasets"
            )
        pairs.append((prompt, text[len(prompt) :]))
    return pairs


def control_texts(training: Mapping[str, Any]) -> list[str]:
    """Return the control adapter's plain text: as much of the embedded corpus as ``training``'s steps can use."""
    from ..evaluation.data import load_text_dataset

    sequences = training["max_steps"] * training["batch_size"] * training["gradient_accumulation_steps"]
    # as much text as the steps can use (a token is ~4 characters of English): no need to tokenize it all
    corpus = load_text_dataset("embedded", max_chars=8 * sequences * training["seq_len"])
    return corpus.train


def train_and_evaluate(model: Any, tokenizer: Any, config: Mapping[str, Any], path: Path, train_texts: Sequence[Any],
                       eval_texts: Sequence[Any] | None, *, evaluate: Callable[[Any], Evaluation],
                       progress: bool = True, keep_adapters: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train a copy of ``model`` on ``train_texts`` under run ``config`` (files under ``path``), score it with
    ``evaluate``; return its metrics (accuracies, intervals, training figures). ``model`` is left untouched.

    Early stopping is on when there are ``eval_texts``; ``keep_adapters=False`` deletes the adapter and
    checkpoints once the run is scored.
    """
    from ..finetune import fine_tune
    from ..runtime.memory import free_memory

    settings = finetune_config(config, path / "finetune", early_stopping=eval_texts is not None)
    model = copy.deepcopy(model)
    try:
        with small_model_threads(model):
            result = fine_tune(model, tokenizer, train_texts, eval_texts, settings, live_plot=False,
                               progress=progress).raise_if_failed()  # fmt: skip
        _for_inference(result)
        evaluation = evaluate(result.model)
        save_predictions(path, evaluation)
        metrics = {**evaluation.metrics(), **_training_metrics(result), "eval_seconds": evaluation.seconds}
    finally:
        model = result = None  # drop the copy before freeing memory
        free_memory()
    if not keep_adapters:
        for folder in ("checkpoints", "adapter"):
            shutil.rmtree(path / "finetune" / folder, ignore_errors=True)
    return metrics


def _for_inference(result: FineTuneResult) -> None:
    """Switch an unsloth model to its inference mode (plain peft models need nothing)."""
    if result.backend != "unsloth":
        return
    try:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(result.model)
    except Exception as exc:  # noqa: BLE001 - generation works without it, only slower
        logger.info("unsloth for_inference failed (%s); generating without it", exc)


def _training_metrics(result: FineTuneResult) -> dict[str, Any]:
    """Return what a run's training says about it: steps, why it stopped, losses, time, backend, device."""
    return {"train_steps": result.steps, "stopped_reason": result.stopped_reason, "final_loss": result.final_loss,
            "best_eval_loss": result.best_eval_loss, "best_step": result.best_step, "train_seconds": result.seconds,
            "backend": result.backend, "device": result.device}  # fmt: skip
