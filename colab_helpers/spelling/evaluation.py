"""Scoring a model on the spelling tasks: batched greedy generation, exact match, accuracy with 95% intervals.

Evaluation is generation (left padding, attention mask, a few new tokens) and exact match after
:func:`~.answers.normalize_answer`, never token-level argmax over the label. :func:`transfer_metrics` turns
accuracies into gains over the baseline and the control.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import check_integer
from ..runtime.files import atomic_write_text
from ..runtime.modules import model_device, parameter_count
from .answers import is_correct, normalize_answer
from .config import MIN_SPELLING_GAIN, TRANSFER_TASKS
from .questions import TASKS
from .stats import accuracy_with_ci

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

logger = logging.getLogger(__name__)

SMALL_MODEL_PARAMETERS = 20_000_000  # on the CPU, models up to this size run single-threaded (small_model_threads)


@contextlib.contextmanager
def small_model_threads(model: Any, max_parameters: int = SMALL_MODEL_PARAMETERS) -> Iterator[None]:
    """Run the block with one torch thread when ``model`` is tiny and on the CPU, then restore the count.

    A tiny model gains nothing from intra-op threads, and on a CPU shared with other work threads waiting for each
    other slow its generation and training down many times over.
    """
    import torch

    device = model_device(model)
    small = device.type == "cpu" and parameter_count(model) <= max_parameters
    before = torch.get_num_threads()
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and before > 1:
            torch.set_num_threads(before)


def _greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """Return a fresh greedy ``GenerationConfig``: the model's own may sample or penalise repeats (Qwen does)."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1, pad_token_id=pad,
                            eos_token_id=eos)  # fmt: skip


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 16,
                     batch_size: int = 32) -> list[str]:  # fmt: skip
    """Return the greedy continuation of each prompt (new tokens only, special tokens dropped), in order.

    Prompts are tokenized without added special tokens (as in training), grouped by length and generated
    ``batch_size`` at a time, padded on the left with an attention mask. A CUDA out-of-memory error halves
    the batch and retries. ``batch_size=1`` is one prompt at a time. A tiny model on the CPU runs with one
    thread (see :func:`small_model_threads`).
    """
    batch_size = check_integer(batch_size, "batch_size", fix="e.g. batch_size=32")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    prompts = list(prompts)
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    config = _greedy_config(model, tokenizer, max_new_tokens)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with _left_padding(tokenizer), small_model_threads(model):
            return _generate_in_order(model, tokenizer, encoded, order, config, batch_size)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    """Pad on the left in the block (generation goes on after each prompt's last token), with EOS as the padding
    token when the tokenizer has none; then put both back."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def _generate_in_order(model: Any, tokenizer: Any, encoded: list[list[int]], order: list[int], config: Any,
                       batch_size: int) -> list[str]:  # fmt: skip
    """Generate the ``encoded`` prompts ``batch_size`` at a time in ``order`` (shortest first, so a batch pads
    little), halving the batch on CUDA out-of-memory; return the continuations in the prompts' own order."""
    import torch

    from ..runtime.cuda_fallback import is_cuda_oom
    from ..runtime.memory import free_memory

    device = model_device(model)
    answers: list[str] = [""] * len(encoded)
    start = 0
    while start < len(order):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        batch = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
        try:
            with torch.inference_mode():
                output = model.generate(**batch, generation_config=config)
        except Exception as exc:
            if not is_cuda_oom(exc) or batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            del batch
            free_memory()
            logger.warning("out of memory while generating: batch size halved to %d", batch_size)
            continue
        new = output[:, batch["input_ids"].shape[1] :]
        for index, text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
            answers[index] = text
        start += len(chunk)
    return answers


def answer_budget(tokenizer: Any, answers: Iterable[str], margin: int = 4, minimum: int = 16,
                  questions: Iterable[str] | None = None) -> int:  # fmt: skip
    """Return how many new tokens a generation gets: the longest reference answer's tokens plus ``margin``, and
    at least ``minimum`` (an instruct model often answers in a short sentence: "The 3rd letter is 'p'.").

    With ``questions`` (one per answer), room for the longest question *and* its answer: an instruct model often
    restates the question first ("The number of times 'f' appears in 'tariff' is 2."), and a budget of the
    answer alone cut SmolLM2-135M-Instruct off before the number.
    """
    answers = list(answers)
    lengths = [len(ids) for ids in tokenizer([f" {a}" for a in answers], add_special_tokens=False)["input_ids"]]
    if questions is not None:
        questions = list(questions)
        if len(questions) != len(answers):
            raise ValueError(f"questions ({len(questions)}) and answers ({len(answers)}) must pair up one to one")
        asked = [len(ids) for ids in tokenizer([f" {q}" for q in questions], add_special_tokens=False)["input_ids"]]
        lengths = [a + q for a, q in zip(lengths, asked, strict=True)]
    return max(max(lengths, default=1) + margin, minimum)


@dataclass
class Evaluation:
    """Accuracy per task with bootstrap 95% intervals, and every prediction (see :func:`evaluate`)."""

    scores: dict[str, dict[str, float | int]]  # task -> {"accuracy", "ci_low", "ci_high", "n"}
    predictions: list[dict[str, Any]] = field(repr=False)  # task, word, question, answer, prediction, correct
    seconds: float = 0.0

    def metrics(self) -> dict[str, float | int]:
        """Return flat metrics: ``<task>_accuracy``, ``_ci_low``, ``_ci_high``, ``_n``, and ``transfer_accuracy``."""
        flat: dict[str, float | int] = {}
        for task, score in self.scores.items():
            flat.update({f"{task}_{key}": value for key, value in score.items()})
        transfer = [self.scores[t]["accuracy"] for t in TRANSFER_TASKS if t in self.scores]
        if transfer:
            flat["transfer_accuracy"] = sum(transfer) / len(transfer)
        return flat

    def table(self) -> pd.DataFrame:
        """Return accuracy, interval and count per task as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.scores).T.rename_axis("task")

    def predictions_frame(self) -> pd.DataFrame:
        """Return the predictions as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.predictions)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "seconds": self.seconds, "examples": len(self.predictions)}

    def _repr_html_(self) -> str:
        return self.table().to_html(float_format=lambda v: f"{v:.3f}")


def evaluate(model: Any, tokenizer: Any, dataset: datasets.Dataset, *, tasks: Sequence[str] | None = None,
             batch_size: int = 32, n_boot: int = 1000, seed: int = 0, margin: int = 4,
             min_new_tokens: int = 16, restate: bool = True) -> Evaluation:  # fmt: skip
    """Return the :class:`Evaluation` of ``model`` on ``dataset`` rows (``task``, ``prompt``, ``answer``).

    One batched greedy generation per task, with that task's token budget (longest answer + ``margin``, at
    least ``min_new_tokens``; with ``restate``, and rows that have a ``question``, room to restate the longest
    question first, see :func:`answer_budget`); exact match after :func:`normalize_answer`; accuracy per task
    with a bootstrap 95% interval.
    """
    # the generator is looked up on the package, so that replacing ``spelling.generate_answers`` (a test's
    # scripted model, a faster generator) changes what ``spelling.evaluate`` uses, as in the single module
    from . import generate_answers

    started = time.perf_counter()
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    present = list(dict.fromkeys(row["task"] for row in rows))
    tasks = [t for t in (tasks or present) if t in present]
    if not tasks:
        raise ValueError(f"no rows of the tasks {list(tasks or [])} in the dataset (it has {present})")
    scores: dict[str, dict[str, float | int]] = {}
    predictions: list[dict[str, Any]] = []
    for task in tasks:
        task_rows = [row for row in rows if row["task"] == task]
        asked = [row.get("question") for row in task_rows]
        questions = asked if restate and all(asked) else None
        budget = answer_budget(tokenizer, [row["answer"] for row in task_rows], margin, min_new_tokens, questions)
        outputs = generate_answers(model, tokenizer, [row["prompt"] for row in task_rows], max_new_tokens=budget,
                                   batch_size=batch_size)  # fmt: skip
        correct = []
        for row, output in zip(task_rows, outputs, strict=True):
            ok = is_correct(output, row["answer"], task)
            correct.append(ok)
            predictions.append({"task": task, "word": row["word"], "question": row.get("question", ""),
                                "answer": row["answer"], "prediction": output,
                                "normalized": normalize_answer(output, task), "correct": ok})  # fmt: skip
        scores[task] = accuracy_with_ci(correct, n_boot=n_boot, seed=seed)
    return Evaluation(scores=scores, predictions=predictions, seconds=time.perf_counter() - started)


def transfer_metrics(scores: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                     control: Mapping[str, Any] | None = None, *,
                     min_spelling_gain: float = MIN_SPELLING_GAIN) -> dict[str, float | None]:  # fmt: skip
    """Return the gains over the baseline (``<task>_gain``) and the control (``<task>_gain_vs_control``) and
    the transfer ratios ``<task>_transfer_ratio[_vs_control]`` = task gain / spelling gain for position and
    count, **None** when ``|spelling gain| < min_spelling_gain``. ``scores`` etc. hold ``<task>_accuracy``.
    """
    out: dict[str, float | None] = {}
    for suffix, reference in (("", baseline), ("_vs_control", control)):
        if reference is None:
            continue
        gains = {task: float(scores[f"{task}_accuracy"]) - float(reference[f"{task}_accuracy"]) for task in TASKS}
        for task in TASKS:
            out[f"{task}_gain{suffix}"] = gains[task]
        for task in TRANSFER_TASKS:
            defined = abs(gains["spelling"]) >= min_spelling_gain
            out[f"{task}_transfer_ratio{suffix}"] = gains[task] / gains["spelling"] if defined else None
    return out


def save_predictions(path: Path, evaluation: Evaluation) -> Path:
    """Write ``predictions.jsonl`` (task, word, answer, prediction, correct: one line per question) under ``path``;
    return the file written (``SpellingStudy.predictions`` reads it back)."""
    keys = ("task", "word", "answer", "prediction", "correct")
    lines = [json.dumps({k: row[k] for k in keys}, ensure_ascii=False) for row in evaluation.predictions]
    return atomic_write_text(path / "predictions.jsonl", "\n".join(lines) + "\n")
