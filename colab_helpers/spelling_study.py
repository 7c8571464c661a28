"""Does LoRA fine-tuning on spelling teach a model letter positions and counts? Train, evaluate, sweep, analyse.

    study = SpellingStudy(model, tokenizer, data, "results/07", model_name="Qwen/Qwen2.5-0.5B-Instruct")
    study.baseline()                      # zero-shot accuracy of the untouched model, per task, with 95% CIs
    runs = study.run_sweep(default_sweep(num_runs=8))
    analysis = study.analyze()            # correlations, parameter effects, top configurations, figures
    analysis.save(study.results_dir)      # report.html (figures embedded) and summary.md

* **Training** goes through the suite's :func:`~colab_helpers.finetune.fine_tune` (unsloth on CUDA where
  supported, peft otherwise; early stopping on the validation loss of the spelling texts; checkpoints) on the
  spelling rows only. Each example is one text, prompt followed by answer; the loss covers the prompt too
  (``fine_tune`` has no per-example prompt masking).
* **Evaluation** is batched greedy generation (left padding, attention mask, a few new tokens) and exact match
  after :func:`normalize_answer`, never token-level argmax over the label; accuracy per task with a
  bootstrap 95% interval.
* **References**: the untouched model (the *baseline*) and a *control* adapter trained for the same number
  of steps on plain text (the embedded corpus), which separates "any fine-tuning" from "learning to spell".
  Both are recorded as runs of the sweep ``"reference"`` and reused when a sweep is run again.
* **Transfer metrics** per run: the gain of each task over the baseline and over the control, and the ratio
  of the position (count) gain to the spelling gain. The ratio is **None** when the spelling gain is within
  ``min_spelling_gain`` (2 points by default) of zero: dividing by noise would say nothing.
* **Analysis**: Pearson and Spearman correlations across runs with bootstrap intervals (numpy only), a
  per-parameter effect table, the top configurations, a scatter of spelling against transfer accuracy, an
  HTML report and a Markdown summary.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import difflib
import html
import json
import logging
import math
import numbers
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_text, ensure_writable_dir
from .errors import OfflineFallbackWarning
from .tasks.spelling import TASKS, fingerprint

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from .finetune import FineTuneConfig, FineTuneResult
    from .sweeps import SweepConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
OFFLINE_MODEL = "embedded-gpt2"
TRANSFER_TASKS: tuple[str, ...] = ("position", "count")
METRICS: tuple[str, ...] = ("spelling_accuracy", "position_accuracy", "count_accuracy", "transfer_accuracy")
REFERENCE_SWEEP = "reference"
CONTROL_MODES: tuple[str, ...] = ("per_steps", "per_run", "none")
MIN_SPELLING_GAIN = 0.02  # below this |spelling gain| the transfer ratio is None
SMALL_MODEL_PARAMETERS = 20_000_000  # on the CPU, models up to this size run single-threaded (small_model_threads)
SEARCH_SPACE: dict[str, list[Any]] = {
    "lora.r": [4, 8, 16, 32],
    "lora.alpha": [8, 16, 32, 64],
    "training.learning_rate": [1e-4, 2e-4, 5e-4, 1e-3],
    "training.batch_size": [4, 8, 16, 32],
    "training.gradient_accumulation_steps": [1, 2, 4, 8],
    "training.max_steps": [500, 1000, 2000, 5000],
}
SMOKE_SEARCH_SPACE: dict[str, list[Any]] = {"lora.r": [4, 8]}  # 2 runs of the smoke base (5 steps each)


# --- normalising answers ------------------------------------------------------------------------------------

_QUOTES = "'\"`\u2018\u2019\u201c\u201d\u00ab\u00bb"
_NUMBER_WORDS = {
    "zero": 0, "none": 0, "never": 0, "one": 1, "once": 1, "two": 2, "twice": 2, "three": 3, "thrice": 3,
    "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20,
}  # fmt: skip
_Q = f"[{_QUOTES}]?"
_LETTER_AFTER_LETTER = re.compile(rf"\bletter\s+(?:is\s+)?{_Q}([a-z]){_Q}(?![a-z])")  # "the letter p", "letter is p"
_LETTER_AFTER_IS = re.compile(rf"\b(?:is|it's|answer:)\s+{_Q}([a-z]){_Q}(?![a-z])")  # "it is 'p'", "... is p."
_PREFIX = re.compile(r"^(?:a|answer)\s*:\s*")


def _first_line(text: str) -> str:
    """Return the first non-empty line of ``text``, lowercased, without markdown emphasis or a leading "A:"."""
    for line in str(text).splitlines():
        line = line.replace("**", "").replace("__", "").strip().lower()
        if line:
            return _PREFIX.sub("", line).strip()
    return ""


def _normalize_spelling(line: str) -> str:
    tokens = re.findall(r"[a-z]+", line)
    best: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:  # the longest run of single letters, whatever separates them
        if len(token) == 1:
            run.append(token)
            continue
        if len(run) > len(best):
            best = run
        run = []
    return " ".join(best) if len(best) >= 2 else " ".join(tokens)


def _normalize_letter(line: str) -> str:
    bare = line.strip(" .!?,;:" + _QUOTES)
    if len(bare) == 1 and bare.isalpha():
        return bare
    for pattern in (_LETTER_AFTER_LETTER, _LETTER_AFTER_IS):
        match = pattern.search(line)
        if match:
            return match.group(1)
    return bare


def _normalize_count(line: str) -> str:
    number = re.search(r"\d+", line)
    if number:
        return str(int(number.group()))
    for word in re.findall(r"[a-z]+", line):
        if word in _NUMBER_WORDS:
            return str(_NUMBER_WORDS[word])
    return line.strip(" .!?" + _QUOTES)


def normalize_answer(text: str, task: str) -> str:
    """Return the comparable form of an answer to ``task`` (applied alike to predictions and references).

    Only the first non-empty line counts, lowercased, emphasis and a leading "A:" / "Answer:" removed.
    ``spelling``: the longest run of single letters, whatever separates them ("A-P-P-L-E", "a, p, p, l, e",
    "The letters are a p p l e") -> ``"a p p l e"``; an unspelled "apple" stays ``"apple"`` (not a spelling).
    ``position``: one letter ("p", "'p'", "p.", "the letter p", "The 3rd letter is p") -> ``"p"``.
    ``count``: the first number, digits or a word ("2", "two", "twice", "It appears 2 times") -> ``"2"``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {list(TASKS)}")
    line = _first_line(text)
    if task == "spelling":
        return _normalize_spelling(line)
    if task == "position":
        return _normalize_letter(line)
    return _normalize_count(line)


def is_correct(prediction: str, answer: str, task: str) -> bool:
    """Return True when ``prediction`` matches ``answer`` exactly after :func:`normalize_answer`."""
    return normalize_answer(prediction, task) == normalize_answer(answer, task)


# --- statistics (numpy only) --------------------------------------------------------------------------------


def _check_boot(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}; e.g. n_boot=1000")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; e.g. confidence=0.95")


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Return the percentile bootstrap interval of the mean of ``values``; ``(nan, nan)`` when empty."""
    import numpy as np

    _check_boot(n_boot, confidence)
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_with_ci(correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """Return ``{"accuracy", "ci_low", "ci_high", "n"}`` of a list of right/wrong answers (95% bootstrap)."""
    values = [1.0 if c else 0.0 for c in correct]
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    accuracy = sum(values) / len(values) if values else math.nan
    return {"accuracy": accuracy, "ci_low": low, "ci_high": high, "n": len(values)}


def rank(values: Sequence[float]) -> np.ndarray:
    """Return the 1-based ranks of ``values``, ties given their average rank (as Spearman's rho needs)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(data.size, dtype=float)
    ranks[order] = np.arange(1, data.size + 1)
    _, inverse, counts = np.unique(data, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Return Pearson's r of ``x`` and ``y``; NaN with fewer than 2 pairs or a constant input."""
    import numpy as np

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Return Spearman's rho: Pearson's r of the ranks (ties averaged)."""
    return pearson(rank(x), rank(y))


def correlation_with_ci(x: Sequence[float], y: Sequence[float], *, method: str = "pearson", n_boot: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, float | int]:  # fmt: skip
    """Return ``{"r", "ci_low", "ci_high", "n"}``: the correlation and its percentile bootstrap interval.

    Resamples of pairs whose correlation is undefined (a constant resample) are left out; with fewer than
    3 pairs the interval is NaN.
    """
    import numpy as np

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    _check_boot(n_boot, confidence)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    measure = pearson if method == "pearson" else spearman
    result: dict[str, float | int] = {"r": measure(a, b), "ci_low": math.nan, "ci_high": math.nan, "n": int(a.size)}
    if a.size < 3:
        return result
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, a.size, size=(n_boot, a.size))
    values = np.array([measure(a[i], b[i]) for i in samples])
    values = values[np.isfinite(values)]
    if values.size:
        tail = (1 - confidence) / 2 * 100
        result["ci_low"], result["ci_high"] = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return result


# --- generation and evaluation ------------------------------------------------------------------------------


def _model_device(model: Any) -> Any:
    import torch

    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def small_model_threads(model: Any, max_parameters: int = SMALL_MODEL_PARAMETERS) -> Iterator[None]:
    """Run the block with one torch thread when ``model`` is tiny and on the CPU, then restore the count.

    A model of ~1M parameters gains nothing from intra-op threads, and on a CPU shared with other work
    threads that wait for each other made its generation and training 10-30x slower (measured on 2 cores).
    """
    import torch

    device = _model_device(model)
    small = device.type == "cpu" and sum(p.numel() for p in model.parameters()) <= max_parameters
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
    import torch

    from .fallback import is_cuda_oom
    from .memory import free_memory

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}; e.g. batch_size=32")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    prompts = list(prompts)
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    config = _greedy_config(model, tokenizer, max_new_tokens)
    device = _model_device(model)
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = bool(getattr(model, "training", False))
    model.eval()
    answers: list[str] = [""] * len(prompts)
    threads = small_model_threads(model)
    threads.__enter__()
    try:
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
    finally:
        threads.__exit__(None, None, None)
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad
        model.train(was_training)
    return answers


def answer_budget(tokenizer: Any, answers: Iterable[str], margin: int = 4, minimum: int = 16) -> int:
    """Return how many new tokens a generation gets: the longest reference answer's tokens plus ``margin``, and
    at least ``minimum`` (an instruct model often answers in a short sentence: "The 3rd letter is 'p'.")."""
    lengths = [len(ids) for ids in tokenizer([f" {a}" for a in answers], add_special_tokens=False)["input_ids"]]
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
             min_new_tokens: int = 16) -> Evaluation:  # fmt: skip
    """Return the :class:`Evaluation` of ``model`` on ``dataset`` rows (``task``, ``prompt``, ``answer``).

    One batched greedy generation per task, with that task's token budget (longest answer + ``margin``, at
    least ``min_new_tokens``); exact match after :func:`normalize_answer`; accuracy per task with a bootstrap
    95% interval.
    """
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
        budget = answer_budget(tokenizer, [row["answer"] for row in task_rows], margin, min_new_tokens)
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


# --- run configs and the sweep ------------------------------------------------------------------------------

_BACKENDS = ("auto", "peft", "unsloth")
# dotted key -> (kind, example): what check_run_config accepts
_RUN_KEYS: dict[str, tuple[str, str]] = {
    "lora.r": ("int", "8"),
    "lora.alpha": ("number", "16"),
    "lora.dropout": ("fraction", "0.05"),
    "training.learning_rate": ("number", "2.0e-4"),
    "training.batch_size": ("int", "8"),
    "training.gradient_accumulation_steps": ("int", "1"),
    "training.max_steps": ("int", "1000"),
    "training.seq_len": ("int", "128"),
    "training.warmup_ratio": ("fraction", "0.05"),
    "training.evaluations": ("int", "20"),
    "training.early_stopping_patience": ("int_or_none", "4"),
    "training.checkpoints": ("int_or_zero", "4"),
    "training.seed": ("seed", "0"),
    "training.backend": ("backend", "auto"),
}


def base_config(model_name: str = DEFAULT_MODEL, *, smoke: bool = False) -> dict[str, Any]:
    """Return the run config the sweep varies: ``model``, ``lora.*`` and ``training.*`` (see ``_RUN_KEYS``).

    ``training.batch_size`` is the micro-batch; ``evaluations`` is how many validation-loss evaluations a
    run makes (``eval_every = max_steps // evaluations``); ``checkpoints`` how many it writes (0 = only at the end).
    """
    config = {
        "model": model_name,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"learning_rate": 2e-4, "batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 1000,
                     "seq_len": 128, "warmup_ratio": 0.05, "evaluations": 20, "early_stopping_patience": 4,
                     "checkpoints": 4, "seed": 0, "backend": "auto"},
    }  # fmt: skip
    if smoke:
        config["lora"].update(alpha=16)
        config["training"].update(learning_rate=1e-3, batch_size=4, max_steps=5, seq_len=64, evaluations=2,
                                  early_stopping_patience=2, checkpoints=1)  # fmt: skip
    return config


def default_sweep(*, smoke: bool = False, strategy: str = "random", num_runs: int = 8, seed: int = 0,
                  name: str = "spelling") -> SweepConfig:  # fmt: skip
    """Return the study's sweep over :data:`SEARCH_SPACE`: ``num_runs`` seeded random draws by default, every
    combination (4,096 runs) with ``strategy="grid"``; in smoke mode a 2-run grid over ``lora.r``.
    """
    from .sweeps import SweepConfig

    if smoke:
        return SweepConfig(parameters=copy.deepcopy(SMOKE_SEARCH_SPACE), strategy="grid", name=name)
    parameters = {key: {"values": list(values)} for key, values in SEARCH_SPACE.items()}
    return SweepConfig(parameters=parameters, strategy=strategy, num_runs=num_runs if strategy == "random" else None,
                       seed=seed, name=name)  # fmt: skip


def _type_problem(kind: str, value: Any) -> str | None:
    """Return what is wrong with ``value`` for ``kind``, or None when it is fine."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    integer = isinstance(value, int) and not isinstance(value, bool)
    problems = {
        "int": None if integer and value >= 1 else "an integer >= 1",
        "int_or_none": None if value is None or (integer and value >= 1) else "an integer >= 1 or null",
        "int_or_zero": None if integer and value >= 0 else "an integer >= 0",
        "seed": None if integer else "an integer",
        "number": None if number and value > 0 else "a number > 0",
        "fraction": None if number and 0 <= value < 1 else "a number in [0, 1)",
        "backend": None if value in _BACKENDS else f"one of {list(_BACKENDS)}",
    }
    return problems[kind]


def check_run_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key, the value and the fix when ``config`` is not a valid run config.

    Checks every ``lora.*`` / ``training.*`` key is known and of the right type (``"2e-4"`` in quotes is a
    string, ``8.0`` is not an integer), and that ``model`` is a non-empty string.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a mapping, got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a model name such as {DEFAULT_MODEL!r}, got {model!r}")
    for section in ("lora", "training"):
        values = config.get(section)
        if not isinstance(values, Mapping):
            raise ValueError(f"{section} must be a mapping of settings, got {values!r}; start from base_config()")
        for key in values:
            dotted = f"{section}.{key}"
            if dotted not in _RUN_KEYS:
                near = difflib.get_close_matches(dotted, list(_RUN_KEYS), n=1, cutoff=0.5)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"unknown setting {dotted!r}{hint}; the settings are {sorted(_RUN_KEYS)}")
    for dotted, (kind, example) in _RUN_KEYS.items():
        section, key = dotted.split(".")
        if key not in config[section]:
            raise ValueError(f"{dotted} is missing; e.g. {dotted}: {example} (base_config() has every key)")
        value = config[section][key]
        problem = _type_problem(kind, value)
        if problem:
            raise ValueError(
                f"{dotted} must be {problem}, got {value!r} ({type(value).__name__}); e.g. {dotted}: {example}"
                + (" (write numbers without quotes)" if isinstance(value, str) and kind != "backend" else "")
            )


def check_sweep(base: Mapping[str, Any], sweep: Any) -> list[dict[str, Any]]:
    """Return the run configs of ``sweep`` over ``base``, every listed value and every config checked first.

    A bad value raises ``ValueError`` naming the parameter, even one a random draw would not have picked.
    """
    from .sweeps import expand, load_sweep, merge

    sweep_config = load_sweep(sweep)
    check_run_config(base)
    for key, spec in sweep_config.parameters.items():
        for value in spec.get("values", []):
            try:
                check_run_config(merge(base, {key: value}))
            except ValueError as exc:
                raise ValueError(f"sweep {sweep_config.name!r}, parameter {key!r}, value {value!r}: {exc}") from None
    return expand(base, sweep_config, validate=check_run_config)


def finetune_config(config: Mapping[str, Any], output_dir: str | Path, *,
                    early_stopping: bool = True) -> FineTuneConfig:  # fmt: skip
    """Return the :class:`~colab_helpers.finetune.FineTuneConfig` of run ``config``, writing to ``output_dir``.

    Checkpoints keep only the newest one and ``resume=True``: a run restarted after a disconnect continues.
    """
    from .finetune import FineTuneConfig

    check_run_config(config)
    lora, training = config["lora"], config["training"]
    steps = training["max_steps"]
    checkpoints = training["checkpoints"]
    return FineTuneConfig(
        r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], learning_rate=training["learning_rate"],
        max_steps=steps, micro_batch_size=training["batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"], seq_len=training["seq_len"],
        warmup_steps=int(round(steps * training["warmup_ratio"])), eval_every=max(1, steps // training["evaluations"]),
        eval_batches=4, early_stopping_patience=training["early_stopping_patience"] if early_stopping else None,
        checkpoint_every=max(1, steps // checkpoints) if checkpoints else None, keep_checkpoints=1,
        output_dir=str(output_dir), resume=True, backend=training["backend"], seed=training["seed"],
    )  # fmt: skip


def load_study_model(name: str = DEFAULT_MODEL, *, smoke: bool = False,
                     offline_model: str = OFFLINE_MODEL) -> tuple[Any, Any, str]:  # fmt: skip
    """Return ``(model, tokenizer, name loaded)``: ``name``, or the embedded ``offline_model`` in smoke mode or
    when ``name`` cannot be loaded (no hub, not cached; one ``OfflineFallbackWarning`` says why)."""
    from .models import load_model

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


# --- the study ----------------------------------------------------------------------------------------------


class SpellingStudy:
    """Baseline, control and a LoRA sweep on spelling, evaluated on all three tasks, tracked in ``runs.csv``.

    ``model`` stays untouched: every run trains a deep copy (on GPU this needs room for two copies; a 4-bit
    model cannot be copied, load it unquantized). ``data`` comes from
    :func:`colab_helpers.tasks.spelling.build_datasets`; accuracies are measured on ``eval_split``, early
    stopping on the validation loss. ``control`` is ``"per_steps"`` (one control adapter per step count, with
    the base config's other settings), ``"per_run"`` (one per run, its exact settings: twice the cost) or
    ``"none"``. ``keep_adapters=False`` deletes each run's adapter and checkpoints once it is recorded.
    """

    def __init__(self, model: Any, tokenizer: Any, data: datasets.DatasetDict,
                 results_dir: str | Path = "results/spelling", *, model_name: str | None = None,
                 eval_split: str = "test", batch_size: int = 32, n_boot: int = 1000, control: str = "per_steps",
                 min_spelling_gain: float = MIN_SPELLING_GAIN, keep_adapters: bool = False, progress: bool = True,
                 live_plot: bool = True, mirror: str | None = None, seed: int = 0) -> None:  # fmt: skip
        from .tracking import RunManager

        if control not in CONTROL_MODES:
            raise ValueError(f"control must be one of {list(CONTROL_MODES)}, got {control!r}")
        if eval_split not in data:
            raise ValueError(f"eval_split {eval_split!r} is not in the data (splits: {list(data)})")
        missing = [t for t in TASKS if t not in set(data[eval_split]["task"])]
        if missing:
            raise ValueError(f"the {eval_split} split has no rows of {missing}; build it with eval_tasks={list(TASKS)}")
        self.model, self.tokenizer, self.data = model, tokenizer, data
        self.model_name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model")
        self.results_dir = ensure_writable_dir(results_dir)
        self.manager = RunManager(self.results_dir, mirror=mirror)
        self.eval_split, self.batch_size, self.n_boot, self.seed = eval_split, batch_size, n_boot, seed
        self.control_mode, self.min_spelling_gain, self.keep_adapters = control, min_spelling_gain, keep_adapters
        self.progress, self.live_plot = progress, live_plot
        self.data_fingerprint = fingerprint(data)
        train_tasks = sorted(set(data["train"]["task"]))
        self.train_texts = list(data["train"]["text"])
        self.eval_texts = [row["text"] for row in data["validation"] if row["task"] in train_tasks]
        self.base: dict[str, Any] = base_config(self.model_name)
        self.sweep_name: str | None = None

    def __repr__(self) -> str:
        return f"SpellingStudy({self.model_name!r}, data {self.data_fingerprint}, results {str(self.results_dir)!r})"

    # -- references -----------------------------------------------------------------------------------

    def _eval_record(self) -> dict[str, Any]:
        return {"data": self.data_fingerprint, "split": self.eval_split, "n_boot": self.n_boot, "seed": self.seed}

    def evaluate(self, model: Any) -> Evaluation:
        """Return the :class:`Evaluation` of ``model`` on the study's evaluation split."""
        return evaluate(model, self.tokenizer, self.data[self.eval_split], batch_size=self.batch_size,
                        n_boot=self.n_boot, seed=self.seed)  # fmt: skip

    def _reference(self, record: dict[str, Any], produce: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Return the metrics of reference run ``record`` (recorded once under sweep "reference", then reused)."""
        existing = self.manager.find(record, REFERENCE_SWEEP)
        if existing is not None:
            row = self.manager.get(existing)
            if row.get("status") == "done":
                return {**row, "run_id": existing}
        run = self.manager.new_run(record, sweep=REFERENCE_SWEEP, run_id=existing)
        try:
            metrics = produce(run.path)
        except BaseException as exc:
            run.finish("failed", error=exc)
            raise
        run.update_metrics(metrics)
        run.finish("done")
        return {**metrics, "run_id": run.run_id}

    def baseline(self) -> dict[str, Any]:
        """Return the zero-shot metrics of the untouched model (``<task>_accuracy``, intervals, ``run_id``)."""
        record = {"kind": "baseline", "model": self.model_name, "eval": self._eval_record()}

        def produce(path: Path) -> dict[str, Any]:
            evaluation = self.evaluate(self.model)
            _save_predictions(path, evaluation)
            return {**evaluation.metrics(), "eval_seconds": evaluation.seconds}

        return self._reference(record, produce)

    def control(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Return the metrics of the control adapter for run ``config`` (plain text, same steps); None if off."""
        if self.control_mode == "none":
            return None
        settings = config if self.control_mode == "per_run" else merge_steps(self.base, config)
        record = {"kind": "control", "model": self.model_name, "lora": settings["lora"],
                  "training": settings["training"], "eval": self._eval_record()}  # fmt: skip

        def produce(path: Path) -> dict[str, Any]:
            from .data import load_text_dataset

            training = settings["training"]
            sequences = training["max_steps"] * training["batch_size"] * training["gradient_accumulation_steps"]
            # as much text as the steps can use (a token is ~4 characters of English): no need to tokenize it all
            corpus = load_text_dataset("embedded", max_chars=8 * sequences * training["seq_len"])
            return self._train_and_evaluate(settings, path, corpus.train, None)

        return self._reference(record, produce)

    # -- runs -----------------------------------------------------------------------------------------

    def _train_and_evaluate(self, config: Mapping[str, Any], path: Path, train_texts: Sequence[str],
                            eval_texts: Sequence[str] | None) -> dict[str, Any]:  # fmt: skip
        """Train a copy of the model on ``train_texts`` under run ``config``; return its metrics."""
        from .finetune import fine_tune
        from .memory import free_memory

        settings = finetune_config(config, path / "finetune", early_stopping=eval_texts is not None)
        model = copy.deepcopy(self.model)
        try:
            with small_model_threads(model):
                result = fine_tune(model, self.tokenizer, train_texts, eval_texts, settings, live_plot=False,
                                   progress=self.progress)  # fmt: skip
            _for_inference(result)
            evaluation = self.evaluate(result.model)
            _save_predictions(path, evaluation)
            metrics = {**evaluation.metrics(), **_training_metrics(result), "eval_seconds": evaluation.seconds}
        finally:
            model = result = None  # noqa: F841 - drop the copy before freeing memory
            free_memory()
        if not self.keep_adapters:
            for folder in ("checkpoints", "adapter"):
                shutil.rmtree(path / "finetune" / folder, ignore_errors=True)
        return metrics

    def run_one(self, config: Mapping[str, Any], *, sweep: str | None = None, baseline: Mapping[str, Any] | None = None
                ) -> tuple[str, str]:  # fmt: skip
        """Run (or skip, when already done) one tracked sweep run; return ``(run_id, status)``."""
        sweep = sweep or self.sweep_name or "spelling"
        record = {**config, "eval": self._eval_record()}
        existing = self.manager.find(record, sweep)
        if existing is not None and self.manager.get(existing).get("status") == "done":
            return existing, "skipped"
        baseline = baseline if baseline is not None else self.baseline()
        run = self.manager.new_run(record, sweep=sweep, run_id=existing)
        try:
            control = self.control(config)
            metrics = self._train_and_evaluate(config, run.path, self.train_texts, self.eval_texts)
            metrics.update(transfer_metrics(metrics, baseline, control, min_spelling_gain=self.min_spelling_gain))
            metrics.update(baseline_run_id=baseline["run_id"], control_run_id=control["run_id"] if control else None)
            run.update_metrics(metrics)
        except Exception as exc:  # noqa: BLE001 - one failed run is recorded; the sweep goes on
            logger.warning("run %s failed: %s", run.run_id, exc)
            run.finish("failed", error=exc)
            return run.run_id, "failed"
        run.finish("done")
        return run.run_id, "done"

    def run_sweep(self, sweep: Any = None, base: Mapping[str, Any] | None = None, *,
                  max_runtime: float | None = None) -> pd.DataFrame:  # fmt: skip
        """Run every config of ``sweep`` (default :func:`default_sweep`) over ``base`` (default :func:`base_config`);
        return the sweep's runs table.

        Every config is checked before the first run; runs already ``done`` are skipped, so rerunning after a
        disconnect continues; a failing run is recorded ``failed`` and the sweep goes on; past ``max_runtime``
        seconds the remaining runs are recorded ``skipped``. Progress: a bar and a live plot of the accuracies.
        """
        from tqdm.auto import tqdm

        from .sweeps import load_sweep

        sweep_config = load_sweep(sweep if sweep is not None else default_sweep())
        self.base = dict(base) if base is not None else base_config(self.model_name)
        self.base["model"] = self.model_name
        configs = check_sweep(self.base, sweep_config)
        self.sweep_name = sweep_config.name
        baseline = self.baseline()
        plot = self._live_plot(baseline)
        started = time.monotonic()
        counts = {"done": 0, "skipped": 0, "failed": 0}
        bar = tqdm(total=len(configs), desc=f"sweep {sweep_config.name}", unit="run", disable=not self.progress)
        try:
            for index, config in enumerate(configs):
                if max_runtime is not None and time.monotonic() - started > max_runtime:
                    self._skip(config, sweep_config.name, max_runtime)
                    counts["skipped"] += 1
                else:
                    run_id, status = self.run_one(config, sweep=sweep_config.name, baseline=baseline)
                    counts[status] += 1
                    if plot is not None and status in ("done", "skipped"):
                        row = self.manager.get(run_id)
                        plot.update(index + 1, {m: row[m] for m in METRICS[:3] if isinstance(row.get(m), int | float)})
                bar.update(1)
                bar.set_postfix(counts)
        finally:
            bar.close()
            if plot is not None:
                plot.close()
        return self.runs()

    def _skip(self, config: Mapping[str, Any], sweep: str, max_runtime: float) -> None:
        record = {**config, "eval": self._eval_record()}
        existing = self.manager.find(record, sweep)
        if existing is not None and self.manager.get(existing).get("status") == "done":
            return
        run = self.manager.new_run(record, sweep=sweep, run_id=existing)
        run.finish("skipped", error=f"max_runtime of {max_runtime:g} s reached before this run started")

    def _live_plot(self, baseline: Mapping[str, Any]) -> Any:
        if not self.live_plot:
            return None
        from .plotting import LivePlot

        plot = LivePlot([tuple(METRICS[:3])], title="Spelling sweep: accuracy per run", xlabel="run",
                        path=self.results_dir / "sweep_progress.png", min_interval=0.5)  # fmt: skip
        plot.update(0, {m: baseline[m] for m in METRICS[:3]})  # run 0: the untouched model
        return plot

    def runs(self, sweep: str | None = None) -> pd.DataFrame:
        """Return the runs of ``sweep`` (default: the last sweep run) as a DataFrame."""
        return self.manager.runs(sweep=sweep or self.sweep_name)

    def predictions(self, run_id: str) -> pd.DataFrame:
        """Return the evaluation answers of run ``run_id`` (a sweep run, the baseline or a control)."""
        import pandas as pd

        path = self.manager.run_dir(run_id) / "predictions.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"run {run_id!r} has no predictions.jsonl (it did not finish its evaluation)")
        return pd.read_json(path, lines=True)

    def references(self) -> pd.DataFrame:
        """Return the baseline and control runs (sweep ``"reference"``)."""
        return self.manager.runs(sweep=REFERENCE_SWEEP)

    def analyze(self, sweep: str | None = None, *, n_boot: int = 2000) -> TransferAnalysis:
        """Return the :class:`TransferAnalysis` of the sweep's finished runs against baseline and controls."""
        references = self.references()
        done = references[references["status"] == "done"] if len(references) else references
        baseline = done[done["kind"] == "baseline"] if "kind" in done else done.iloc[0:0]
        return analyze(self.runs(sweep), baseline=baseline.iloc[-1].to_dict() if len(baseline) else None,
                       controls=done[done["kind"] == "control"] if "kind" in done else None, n_boot=n_boot,
                       seed=self.seed, title=f"Spelling transfer: {self.model_name}")  # fmt: skip


def merge_steps(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with the ``training.max_steps`` of ``config`` (the settings of a per-steps control)."""
    merged = copy.deepcopy(dict(base))
    merged["training"] = {**merged["training"], "max_steps": config["training"]["max_steps"]}
    return merged


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
    return {"train_steps": result.steps, "stopped_reason": result.stopped_reason, "final_loss": result.final_loss,
            "best_eval_loss": result.best_eval_loss, "best_step": result.best_step, "train_seconds": result.seconds,
            "backend": result.backend, "device": result.device}  # fmt: skip


def _save_predictions(path: Path, evaluation: Evaluation) -> None:
    keys = ("task", "word", "answer", "prediction", "correct")
    lines = [json.dumps({k: row[k] for k in keys}, ensure_ascii=False) for row in evaluation.predictions]
    atomic_write_text(path / "predictions.jsonl", "\n".join(lines) + "\n")


# --- tables and analysis -----------------------------------------------------------------------------------


def accuracy_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return accuracy, 95% interval and number of questions per task from flat ``<task>_accuracy``... metrics."""
    import pandas as pd

    rows = [{"task": task, **{key: metrics.get(f"{task}_{key}") for key in ("accuracy", "ci_low", "ci_high", "n")}}
            for task in TASKS if f"{task}_accuracy" in metrics]  # fmt: skip
    return pd.DataFrame(rows).set_index("task")


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the runs table reduced to what a person reads: swept settings, accuracies, gains, status,
    best transfer first."""
    columns = ["run_id", "status", *SEARCH_SPACE, *METRICS, "position_gain", "count_gain", "position_gain_vs_control",
               "count_gain_vs_control", "position_transfer_ratio", "count_transfer_ratio", "train_steps",
               "stopped_reason", "error"]  # fmt: skip
    shown = runs[[c for c in columns if c in runs]]
    if "transfer_accuracy" in shown:
        shown = shown.sort_values("transfer_accuracy", ascending=False, na_position="last")
    return shown.reset_index(drop=True)



def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the ``done`` runs that have all three accuracies."""
    if runs is None or len(runs) == 0 or "status" not in runs:
        import pandas as pd

        return pd.DataFrame(columns=list(runs.columns) if runs is not None else [])
    done = runs[runs["status"] == "done"]
    needed = [m for m in METRICS[:3] if m in done]
    return done.dropna(subset=needed).reset_index(drop=True) if len(needed) == 3 else done.iloc[0:0]


def correlation_table(runs: pd.DataFrame, x: str = "spelling_accuracy",
                      ys: Sequence[str] = ("position_accuracy", "count_accuracy", "transfer_accuracy"),
                      *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Return Pearson and Spearman correlations of ``x`` with each of ``ys`` across runs, with bootstrap 95%
    intervals (NaN with fewer than 3 runs or a constant column)."""
    import pandas as pd

    records = []
    for y in ys:
        if x not in runs or y not in runs:
            continue
        a, b = runs[x].astype(float).to_numpy(), runs[y].astype(float).to_numpy()
        p = correlation_with_ci(a, b, method="pearson", n_boot=n_boot, seed=seed)
        s = correlation_with_ci(a, b, method="spearman", n_boot=n_boot, seed=seed)
        records.append({"x": x, "y": y, "runs": p["n"], "pearson": p["r"], "pearson_ci_low": p["ci_low"],
                        "pearson_ci_high": p["ci_high"], "spearman": s["r"], "spearman_ci_low": s["ci_low"],
                        "spearman_ci_high": s["ci_high"]})  # fmt: skip
    return pd.DataFrame(records)


def parameter_effects(runs: pd.DataFrame, parameters: Sequence[str] | None = None,
                      metrics: Sequence[str] = METRICS) -> pd.DataFrame:  # fmt: skip
    """Return, for each swept parameter and value, the number of runs and the mean of each metric."""
    import pandas as pd

    parameters = [p for p in (parameters or SEARCH_SPACE) if p in runs]
    metrics = [m for m in metrics if m in runs]
    records = []
    for parameter in parameters:
        for value, group in runs.groupby(parameter, sort=True):
            records.append({"parameter": parameter, "value": value, "runs": len(group),
                            **{f"mean_{m}": float(group[m].astype(float).mean()) for m in metrics}})  # fmt: skip
    return pd.DataFrame(records)


def parameter_importance(effects: pd.DataFrame, metric: str = "transfer_accuracy") -> pd.DataFrame:
    """Return, per parameter, the spread (best minus worst mean ``metric`` over its values) and the best value,
    largest spread first: a first look at which hyperparameters matter (no interactions, no significance)."""
    import pandas as pd

    column = f"mean_{metric}"
    if effects.empty or column not in effects:
        return pd.DataFrame(columns=["parameter", "values", "spread", "best_value", "best_mean"])
    records = []
    for parameter, group in effects.groupby("parameter", sort=False):
        best = group.loc[group[column].idxmax()]
        records.append({"parameter": parameter, "values": len(group),
                        "spread": float(group[column].max() - group[column].min()),
                        "best_value": best["value"], "best_mean": float(best[column])})  # fmt: skip
    return pd.DataFrame(records).sort_values("spread", ascending=False).reset_index(drop=True)


def top_configs(runs: pd.DataFrame, k: int = 5, by: str = "transfer_accuracy") -> pd.DataFrame:
    """Return the ``k`` runs with the highest ``by``: their swept settings and accuracies."""
    columns = ["run_id", *[p for p in SEARCH_SPACE if p in runs], *[m for m in METRICS if m in runs],
               *[c for c in ("position_gain_vs_control", "count_gain_vs_control", "train_steps") if c in runs]]
    if by not in runs or runs.empty:
        return runs.reindex(columns=columns).iloc[0:0]
    return runs.sort_values(by, ascending=False).head(k)[columns].reset_index(drop=True)


def plot_spelling_vs_transfer(runs: pd.DataFrame, baseline: Mapping[str, Any] | None = None,
                              controls: pd.DataFrame | None = None, *,
                              path: str | Path | None = None) -> Figure:  # fmt: skip
    """Return a figure: spelling accuracy (x) against position and count accuracy (y), one point per run with
    its 95% intervals, the baseline as a star and the controls as crosses."""
    from .figures import new_figure

    figure = new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for ax, task in zip(axes, TRANSFER_TASKS, strict=True):
        y = f"{task}_accuracy"
        if len(runs):
            xs, ys = runs["spelling_accuracy"].astype(float), runs[y].astype(float)
            xerr = _error_bars(runs, "spelling")
            yerr = _error_bars(runs, task)
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color="#1f77b4", ecolor="#9ecae1", capsize=2,
                        label=f"LoRA on spelling ({len(runs)} runs)")  # fmt: skip
        if controls is not None and len(controls):
            ax.scatter(controls["spelling_accuracy"].astype(float), controls[y].astype(float), marker="x",
                       color="#d62728", label="control (plain text)", zorder=3)  # fmt: skip
        if baseline is not None:
            ax.scatter([baseline["spelling_accuracy"]], [baseline[y]], marker="*", s=160, color="#2ca02c",
                       label="untouched model", zorder=4)  # fmt: skip
        ax.set_xlabel("spelling accuracy")
        ax.set_ylabel(f"{task} accuracy")
        ax.set_title(f"Spelling vs {task}")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    if path is not None:
        figure.save(path)
    return figure


def _error_bars(runs: pd.DataFrame, task: str) -> Any:
    import numpy as np

    low, high, value = f"{task}_ci_low", f"{task}_ci_high", f"{task}_accuracy"
    if low not in runs or high not in runs:
        return None
    centre = runs[value].astype(float).to_numpy()
    below, above = centre - runs[low].astype(float).to_numpy(), runs[high].astype(float).to_numpy() - centre
    return np.clip(np.vstack([below, above]), 0, None)


def plot_parameter_effects(effects: pd.DataFrame, metrics: Sequence[str] = METRICS[:3], *,
                           path: str | Path | None = None) -> Figure:  # fmt: skip
    """Return a figure: for each swept parameter, the mean accuracy per value (one line per task)."""
    from .figures import new_figure

    parameters = list(dict.fromkeys(effects["parameter"])) if len(effects) else []
    columns = min(3, max(1, len(parameters)))
    rows = max(1, math.ceil(len(parameters) / columns))
    figure = new_figure(4 * columns, 3 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, parameter in zip(axes, parameters, strict=False):
        group = effects[effects["parameter"] == parameter]
        labels = [f"{v:g}" if isinstance(v, float) else str(v) for v in group["value"]]
        for metric in metrics:
            if f"mean_{metric}" in group:
                ax.plot(labels, group[f"mean_{metric}"], marker="o", label=metric.removesuffix("_accuracy"))
        ax.set_title(parameter, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(parameters) :]:
        ax.set_visible(False)
    if parameters:
        axes[0].set_ylabel("mean accuracy")
        axes[0].legend(fontsize=8)
    else:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no swept parameter has finished runs", ha="center", va="center")
    if path is not None:
        figure.save(path)
    return figure


_WHOLE_COLUMNS = {*SEARCH_SPACE, "runs", "values", "best_value", "train_steps", "n"}  # settings and counts: "%g"


def _cell(column: str, value: Any, digits: int = 3) -> str:
    """Return one table cell as text: settings and counts as written (4, 0.0001), metrics to ``digits`` places."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "" if value is None else str(value)
    number = float(value)
    if math.isnan(number):
        return ""
    if column in _WHOLE_COLUMNS:
        return f"{number:g}"
    return f"{number:.{digits}g}" if number and abs(number) < 1e-2 else f"{number:.{digits}f}"


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every cell formatted by :func:`_cell` (for the Markdown and HTML reports)."""
    return frame.apply(lambda column: column.map(lambda value: _cell(str(column.name), value)))


def _markdown_table(frame: pd.DataFrame) -> str:
    """Return ``frame`` as a GitHub Markdown table (no extra package needed)."""
    if frame is None or frame.empty:
        return "_(none)_"
    shown = _display(frame)
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body])


@dataclass
class TransferAnalysis:
    """The analysis of a sweep: correlations, parameter effects, top configurations, figures, notes."""

    title: str
    runs: Any = field(repr=False)  # finished runs (DataFrame)
    correlations: Any = field(repr=False)
    effects: Any = field(repr=False)
    importance: Any = field(repr=False)
    top: Any = field(repr=False)
    baseline: dict[str, Any] | None = field(default=None, repr=False)
    controls: Any = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def scatter(self, path: str | Path | None = None) -> Figure:
        """Return the spelling-vs-transfer scatter (see :func:`plot_spelling_vs_transfer`)."""
        return plot_spelling_vs_transfer(self.runs, self.baseline, self.controls, path=path)

    def effects_figure(self, path: str | Path | None = None) -> Figure:
        """Return the per-parameter effect figure (see :func:`plot_parameter_effects`)."""
        return plot_parameter_effects(self.effects, path=path)

    def reference_table(self) -> pd.DataFrame:
        """Return the baseline and control accuracies (with intervals) as a table."""
        import pandas as pd

        rows = []
        if self.baseline is not None:
            rows.append({"model": "untouched (baseline)", **_accuracy_cells(self.baseline)})
        if self.controls is not None:
            for _, control in self.controls.iterrows():
                steps = control.get("training.max_steps")
                steps = f"{int(steps)}" if _finite(steps) else "?"
                rows.append({"model": f"control, {steps} steps (plain text)", **_accuracy_cells(control)})
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        """Return the Markdown summary: references, correlations, what matters, top configurations, notes."""
        parts = [
            f"# {self.title}", "",
            f"{len(self.runs)} finished runs. Accuracy is exact match after normalisation, with bootstrap 95% intervals.",
            "", "## Reference models", "", _markdown_table(self.reference_table()),
            "", "## Correlation of spelling accuracy with transfer accuracy across runs", "",
            _markdown_table(self.correlations), "",
            "## Which hyperparameters matter (spread of mean transfer accuracy over each parameter's values)", "",
            _markdown_table(self.importance), "", "## Top configurations for transfer", "", _markdown_table(self.top),
            "", "## Notes", "", *[f"- {note}" for note in self.notes],
        ]  # fmt: skip
        return "\n".join(parts) + "\n"

    def to_html(self) -> str:
        """Return a self-contained HTML report (tables, figures embedded as base64 PNG)."""

        def table(frame: Any) -> str:
            if frame is None or frame.empty:
                return "<p><i>(none)</i></p>"
            return _display(frame).to_html(index=False)

        def image(figure: Any, alt: str) -> str:
            data = base64.b64encode(figure.png()).decode("ascii")
            return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

        columns = [c for c in ("run_id", *SEARCH_SPACE, *METRICS, "position_gain_vs_control", "count_gain_vs_control",
                               "position_transfer_ratio", "count_transfer_ratio", "train_steps", "stopped_reason")
                   if c in self.runs]  # fmt: skip
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(self.title)}</h1>
<p>Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {len(self.runs)} finished runs. Accuracy is exact
match after normalisation, with bootstrap 95% intervals.</p>
<h2>Reference models</h2>{table(self.reference_table())}
<h2>Spelling vs transfer</h2>{image(self.scatter(), "spelling vs transfer accuracy")}
<h2>Correlations across runs</h2>{table(self.correlations)}
<h2>Which hyperparameters matter</h2>{table(self.importance)}{image(self.effects_figure(), "parameter effects")}
{table(self.effects)}
<h2>Top configurations for transfer</h2>{table(self.top)}
<h2>Notes</h2><ul>{notes}</ul>
<h2>All finished runs</h2>{table(self.runs[columns] if columns else self.runs)}
</body></html>
"""

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``report.html``, ``summary.md``, the two figures and the tables (CSV) under ``directory``."""
        from ._io import atomic_write_bytes

        target = ensure_writable_dir(directory)
        written = {"report": atomic_write_text(target / "report.html", self.to_html()),
                   "summary": atomic_write_text(target / "summary.md", self.to_markdown())}  # fmt: skip
        written["scatter"] = atomic_write_bytes(target / "spelling_vs_transfer.png", self.scatter().png())
        written["effects_figure"] = atomic_write_bytes(target / "parameter_effects.png", self.effects_figure().png())
        for name in ("correlations", "effects", "importance", "top"):
            written[name] = atomic_write_text(target / f"{name}.csv", getattr(self, name).to_csv(index=False))
        return written

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _accuracy_cells(row: Mapping[str, Any]) -> dict[str, Any]:
    cells = {}
    for task in TASKS:
        value = row.get(f"{task}_accuracy")
        low, high = row.get(f"{task}_ci_low"), row.get(f"{task}_ci_high")
        cells[task] = f"{value:.3f} [{low:.3f}, {high:.3f}]" if _finite(value, low, high) else ""
    return cells


def _finite(*values: Any) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def analyze(runs: pd.DataFrame, *, baseline: Mapping[str, Any] | None = None, controls: pd.DataFrame | None = None,
            n_boot: int = 2000, seed: int = 0, title: str = "Spelling transfer") -> TransferAnalysis:  # fmt: skip
    """Return the :class:`TransferAnalysis` of a sweep's runs table (only ``done`` runs count)."""
    done = finished_runs(runs)
    correlations = correlation_table(done, n_boot=n_boot, seed=seed)
    effects = parameter_effects(done)
    analysis = TransferAnalysis(title=title, runs=done, correlations=correlations, effects=effects,
                                importance=parameter_importance(effects), top=top_configs(done),
                                baseline=dict(baseline) if baseline is not None else None, controls=controls)  # fmt: skip
    analysis.notes = _notes(analysis)
    return analysis


def _notes(analysis: TransferAnalysis) -> list[str]:
    """Return plain-language caveats: too few runs, intervals spanning zero, undefined ratios."""
    notes = []
    n = len(analysis.runs)
    if n < 3:
        notes.append(f"Only {n} finished run(s): correlations need at least 3 and are NaN here; "
                     "these are mechanics, not findings.")
    elif n < 10:
        notes.append(f"Only {n} runs: correlation intervals are wide; treat rankings as hints.")
    for _, row in analysis.correlations.iterrows():
        low, high = row["pearson_ci_low"], row["pearson_ci_high"]
        if _finite(low, high) and low <= 0 <= high:
            notes.append(f"The 95% interval of Pearson r for spelling vs {row['y']} includes 0: "
                         "no evidence of a linear link.")
    for task in TRANSFER_TASKS:
        column = f"{task}_transfer_ratio"
        if column in analysis.runs and n and analysis.runs[column].isna().all():
            notes.append(f"{column} is undefined in every run: the spelling gain never exceeded {MIN_SPELLING_GAIN:g}.")
    if analysis.baseline is None:
        notes.append("No baseline run: gains over the untouched model are not available.")
    return notes


__all__ = [
    "DEFAULT_MODEL",
    "METRICS",
    "SEARCH_SPACE",
    "Evaluation",
    "SpellingStudy",
    "TransferAnalysis",
    "accuracy_table",
    "accuracy_with_ci",
    "analyze",
    "answer_budget",
    "base_config",
    "bootstrap_ci",
    "check_run_config",
    "check_sweep",
    "correlation_table",
    "correlation_with_ci",
    "default_sweep",
    "evaluate",
    "finetune_config",
    "generate_answers",
    "is_correct",
    "load_study_model",
    "normalize_answer",
    "parameter_effects",
    "parameter_importance",
    "pearson",
    "plot_parameter_effects",
    "plot_spelling_vs_transfer",
    "rank",
    "results_table",
    "small_model_threads",
    "spearman",
    "top_configs",
    "transfer_metrics",
]
