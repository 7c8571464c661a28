"""What a smaller model still knows: one call measuring perplexity in the training domain and in others, and zero-shot
task accuracy, with a table that tells domain adaptation from a better model.

:func:`evaluate_ability` returns an :class:`AbilityResult`; :func:`ability_table` compares several against a
reference (the unpruned model), and :func:`ability_retention` is the share of the reference's task accuracy kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_integer, check_positive_integer, field_help
from ..smoke import SMOKE_EVAL_TOKENS, SMOKE_SEQ_LEN, SMOKE_TASK_ITEMS
from .data import OTHER_DOMAIN_TEXTS, TextDataset, other_domain_text
from .harness import DEFAULT_LIMIT, TaskScore, task_accuracy
from .perplexity import perplexity
from .tasks import resolve_tasks

logger = logging.getLogger(__name__)

MARGIN = 0.02  # a perplexity or a retention counts as changed beyond 2%: less is within what a re-run moves


@dataclass
class AbilityConfig:
    """What :func:`evaluate_ability` measures and how much of it (see each field's ``help``)."""

    other_texts: tuple[str, ...] = field(
        default=("gpl-3.0", "python-docs"),
        metadata=field_help("texts of other domains than the training data, by name (other_domain_text): legal prose "
                            "and technical reference. Their perplexities' geometric mean is the general perplexity."),
    )  # fmt: skip
    tokens: int = field(
        default=3072,
        metadata=field_help("tokens of each text scored (the first ones, the same for every model so figures "
                            "compare): 3072 = 24 blocks of 128."),
    )  # fmt: skip
    seq_len: int = field(default=128, metadata=field_help("tokens per perplexity block; blocks do not overlap."))
    tasks: str | tuple[str, ...] | None = field(
        default="offline",
        metadata=field_help("zero-shot tasks: a preset ('offline': five tasks built locally; 'standard', 'tiny': "
                            "lm-eval's from the Hugging Face Hub), a list of task names, or None for perplexity only."),
    )  # fmt: skip
    limit: int | None = field(
        default=DEFAULT_LIMIT,
        metadata=field_help("items per task at most (None: all); 100 gives a 95% interval of about +-0.1."),
    )  # fmt: skip
    batch_size: int = field(default=16, metadata=field_help("sequences per forward pass, perplexity and tasks."))

    def __post_init__(self) -> None:
        if isinstance(self.other_texts, str) or not isinstance(self.other_texts, Sequence):
            raise ValueError(f"other_texts must be a list of text names, got {self.other_texts!r}; e.g. "
                             f"other_texts={tuple(OTHER_DOMAIN_TEXTS)}")  # fmt: skip
        self.other_texts = tuple(self.other_texts)
        unknown = [name for name in self.other_texts if name not in OTHER_DOMAIN_TEXTS]
        if unknown:
            raise ValueError(f"unknown text {unknown[0]!r} in other_texts; choose from {sorted(OTHER_DOMAIN_TEXTS)}")
        self.seq_len = check_integer(self.seq_len, "seq_len", least=2, fix="e.g. seq_len=128")
        self.tokens = check_integer(self.tokens, "tokens", least=self.seq_len,
                                    fix=f"at least one block of seq_len={self.seq_len}; e.g. tokens=3072")  # fmt: skip
        if self.tasks is not None:
            resolve_tasks(self.tasks)  # an unknown name is a ValueError listing the choices
            self.tasks = self.tasks if isinstance(self.tasks, str) else tuple(self.tasks)
        self.limit = check_positive_integer(self.limit, "limit", optional=True, fix="e.g. limit=100 items per task")
        self.batch_size = check_positive_integer(self.batch_size, "batch_size", fix="e.g. batch_size=16")

    def smoke(self) -> AbilityConfig:
        """Return a copy that runs in seconds on a CPU (:mod:`colab_helpers.smoke`): few tokens, few items."""
        seq_len = min(self.seq_len, SMOKE_SEQ_LEN)
        return dataclasses.replace(self, seq_len=seq_len, tokens=max(seq_len, min(self.tokens, SMOKE_EVAL_TOKENS)),
                                   limit=min(self.limit or SMOKE_TASK_ITEMS, SMOKE_TASK_ITEMS))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serializable dict."""
        values = dataclasses.asdict(self)
        values["other_texts"] = list(self.other_texts)
        values["tasks"] = self.tasks if self.tasks is None or isinstance(self.tasks, str) else list(self.tasks)
        return values

    @classmethod
    def help(cls) -> dict[str, str]:
        """Return ``{field: help text}`` for every setting."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


@dataclass(frozen=True)
class AbilityResult:
    """One model measured: perplexity on held-out text of its training domain (None when not given), on each text
    of another domain (``other_ppl``), zero-shot task scores, and the seconds it all took."""

    in_domain_ppl: float | None
    other_ppl: dict[str, float]
    tasks: dict[str, TaskScore]
    seconds: float

    @property
    def general_ppl(self) -> float:
        """The geometric mean of the other-domain perplexities (NaN without any)."""
        return _geometric_mean(list(self.other_ppl.values()))

    def __str__(self) -> str:
        parts = [f"in-domain ppl {self.in_domain_ppl:.2f}"] if self.in_domain_ppl is not None else []
        parts += [f"general ppl {self.general_ppl:.2f}"] if self.other_ppl else []
        parts += [f"{name} {score.accuracy:.2f}" for name, score in self.tasks.items()]
        return ", ".join(parts) + f" ({self.seconds:.0f} s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_domain_ppl": self.in_domain_ppl,
            "other_ppl": dict(self.other_ppl),
            "general_ppl": self.general_ppl if self.other_ppl else None,  # derived: for a reader of the JSON
            "tasks": {name: score.to_dict() for name, score in self.tasks.items()},
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AbilityResult:
        return cls(data.get("in_domain_ppl"), dict(data.get("other_ppl", {})),
                   {name: TaskScore.from_dict(score) for name, score in data.get("tasks", {}).items()},
                   float(data.get("seconds", 0.0)))  # fmt: skip


def _in_domain_texts(in_domain: Any) -> list[str]:
    """Return the held-out texts of ``in_domain``: a text, a list of texts, or a TextDataset's validation split."""
    if isinstance(in_domain, TextDataset):
        return in_domain.validation
    if isinstance(in_domain, str):
        return [in_domain]
    if isinstance(in_domain, Sequence) and in_domain and all(isinstance(text, str) for text in in_domain):
        return list(in_domain)
    raise ValueError(
        f"in_domain must be a text, a list of texts or a TextDataset (its validation split is used), got "
        f"{in_domain!r:.80}; e.g. in_domain=load_text_dataset('embedded'), or None to skip it"
    )


def evaluate_ability(
    model: Any,
    tokenizer: Any,
    *,
    in_domain: str | Sequence[str] | TextDataset | None = None,
    config: AbilityConfig | None = None,
    progress: bool = True,
) -> AbilityResult:
    """Return what ``model`` still knows (an :class:`AbilityResult`): perplexity on ``in_domain`` (held-out text
    of the training domain: a text, texts, or a TextDataset whose validation split is used; skipped when None),
    perplexity on each of ``config.other_texts``, and zero-shot accuracy on ``config.tasks``.

    Perplexities score the first ``config.tokens`` tokens of each text in non-overlapping blocks of ``seq_len``:
    the same tokens for every model, so figures compare. Tasks run through lm-eval (:func:`~.harness.task_accuracy`).
    """
    config = config or AbilityConfig()
    if not isinstance(config, AbilityConfig):
        raise ValueError(f"config must be an AbilityConfig or None, got {type(config).__name__}; e.g. "
                         "config=AbilityConfig(limit=50)")  # fmt: skip
    texts = _in_domain_texts(in_domain) if in_domain is not None else None
    started = time.perf_counter()

    def ppl(text: str | list[str]) -> float:
        measured = perplexity(model, tokenizer, text, seq_len=config.seq_len, stride=config.seq_len,
                              batch_size=config.batch_size, max_tokens=config.tokens, progress=progress)  # fmt: skip
        return measured.perplexity

    in_domain_ppl = ppl(texts) if texts is not None else None
    other_ppl = {name: ppl(other_domain_text(name)) for name in config.other_texts}
    scores = {}
    if config.tasks is not None:
        scores = task_accuracy(model, tokenizer, config.tasks, limit=config.limit, batch_size=config.batch_size,
                               progress=progress)  # fmt: skip
    result = AbilityResult(in_domain_ppl, other_ppl, scores, time.perf_counter() - started)
    logger.info("ability: %s", result)
    return result


def ability_retention(result: AbilityResult, reference: AbilityResult) -> float:
    """Return the mean accuracy of ``result`` over the tasks on which ``reference`` is above chance, divided by the
    reference's mean over the same tasks (1.0: all kept); NaN when there is no such task."""
    ranked = [name for name, score in reference.tasks.items() if score.above_chance and name in result.tasks]
    if not ranked:
        return math.nan
    kept = sum(result.tasks[name].accuracy for name in ranked) / len(ranked)
    base = sum(reference.tasks[name].accuracy for name in ranked) / len(ranked)
    return kept / base if base > 0 else math.nan


def _ratio(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or not reference or math.isnan(value) or math.isnan(reference):
        return math.nan
    return value / reference


def ability_reading(result: AbilityResult, reference: AbilityResult) -> str:
    """Return how ``result`` reads against ``reference``: ``"domain adaptation"`` when in-domain perplexity improved
    by more than 2% while general perplexity did not; ``"better"`` when general perplexity improved by more than 2% and
    task retention is at least 1 (judged on perplexity alone without ranked tasks); ``"worse"`` when general perplexity
    rose by more than 2% or retention fell below 0.98; ``"about the same"`` otherwise."""
    in_domain = _ratio(result.in_domain_ppl, reference.in_domain_ppl)
    general = _ratio(result.general_ppl, reference.general_ppl)
    retention = ability_retention(result, reference)
    general_better = general < 1 - MARGIN  # NaN compares False: no general perplexity, no claim
    if in_domain < 1 - MARGIN and not general_better:
        return "domain adaptation"
    if general_better and (math.isnan(retention) or retention >= 1):
        return "better"
    if general > 1 + MARGIN or retention < 1 - MARGIN:
        return "worse"
    return "about the same"


def _accuracy_text(score: TaskScore | None) -> str:
    """``0.62 ±0.09``: the accuracy and half its 95% interval's width."""
    return "" if score is None else f"{score.accuracy:.2f} ±{(score.high - score.low) / 2:.2f}"


def ability_table(results: Mapping[str, AbilityResult], reference: str) -> Any:
    """Return a pandas DataFrame, a row per model of ``results``, compared with ``results[reference]``: in-domain
    perplexity, each other-domain perplexity, general perplexity and its ratio to the reference's, each task's
    accuracy (``0.62 ±0.09``; a task on which the reference is not above chance is marked ``(not ranked)`` and left
    out of retention), task retention, and the reading (:func:`ability_reading`)."""
    import pandas as pd

    if reference not in results:
        raise ValueError(f"reference {reference!r} is not among the results {list(results)}; pass one of their names")
    ref = results[reference]
    texts = list(dict.fromkeys(name for result in results.values() for name in result.other_ppl))
    tasks = list(dict.fromkeys(name for result in results.values() for name in result.tasks))
    rows = {}
    for label, result in results.items():
        row: dict[str, Any] = {"in-domain ppl": result.in_domain_ppl if result.in_domain_ppl is not None else math.nan}
        row.update({f"ppl {name}": result.other_ppl.get(name, math.nan) for name in texts})
        row["general ppl"] = result.general_ppl
        row["general vs reference"] = _ratio(result.general_ppl, ref.general_ppl)
        for name in tasks:
            ranked = name in ref.tasks and ref.tasks[name].above_chance
            row[name if ranked else f"{name} (not ranked)"] = _accuracy_text(result.tasks.get(name))
        row["task retention"] = ability_retention(result, ref)
        row["reading"] = "reference" if label == reference else ability_reading(result, ref)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")
