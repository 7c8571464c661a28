"""Zero-shot task accuracy through lm-evaluation-harness, on the model in memory (pruned ones included).

:func:`task_accuracy` builds the local tasks of :mod:`.tasks` into a temporary folder, wraps the model and its
tokenizer in lm-eval's ``HFLM`` and returns one :class:`TaskScore` per task: accuracy, items, a 95% Wilson interval
and the task's chance level. ``lm_eval`` is optional (``pip install "colab-helpers[eval]"``) and imported here only.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import check_positive_integer
from .tasks import TaskSpec, check_hub_tasks, resolve_tasks, write_local_tasks

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "colab-helpers[eval]"'
DEFAULT_LIMIT = 100  # items per task: a 95% interval of about +-0.1 at accuracy 0.5, and a CPU run of seconds per task
_Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
# lm-eval's warnings that are expected when it is handed a model object and local tasks: nothing to act on
_EXPECTED = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model",
             "--limit SHOULD ONLY BE USED FOR TESTING", "assuming single-process call")  # fmt: skip


@functools.lru_cache(maxsize=1)
def is_lm_eval_available() -> bool:
    """Return True when lm-evaluation-harness (``lm_eval``) can be imported (probed once, without importing it)."""
    return importlib.util.find_spec("lm_eval") is not None


def wilson_interval(accuracy: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Return the Wilson score interval ``(low, high)`` of a proportion ``accuracy`` measured on ``n`` items (95% by
    default); ``(0.0, 1.0)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(accuracy, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TaskScore:
    """One task measured: ``accuracy`` on ``n`` items, its 95% Wilson interval ``[low, high]``, the accuracy of a
    random guess (``chance``) and lm-eval's ``metric`` it came from."""

    task: str
    accuracy: float
    n: int
    low: float
    high: float
    chance: float
    metric: str = "acc"

    @property
    def above_chance(self) -> bool:
        """True when the whole interval lies above chance: the model knows something the task measures."""
        return self.low > self.chance

    def __str__(self) -> str:
        mark = "above chance" if self.above_chance else "not above chance"
        return (f"{self.task}: {self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}] on {self.n} items "
                f"(chance {self.chance:g}, {mark})")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskScore:
        return cls(**{key: data[key] for key in ("task", "accuracy", "n", "low", "high", "chance")},
                   metric=data.get("metric", "acc"))  # fmt: skip

    @classmethod
    def measured(cls, spec: TaskSpec, accuracy: float, n: int) -> TaskScore:
        """Return the score of ``spec`` at ``accuracy`` on ``n`` items, with its Wilson interval."""
        low, high = wilson_interval(accuracy, n)
        return cls(spec.name, float(accuracy), int(n), low, high, spec.chance, spec.metric)


def require_lm_eval(what: str = "task accuracy") -> None:
    """Raise ImportError naming the install command when ``lm_eval`` is missing."""
    if not is_lm_eval_available():
        raise ImportError(f"{what} needs lm-evaluation-harness (lm_eval), which is not installed: {INSTALL_HINT}")


def _check_needs(specs: Sequence[TaskSpec], limit: int | None) -> None:
    """Raise ImportError when a task needs a package that is missing (the tinyBenchmarks metric), ValueError when
    ``limit`` would cut a tiny task (its IRT estimate needs all its 100 items)."""
    tiny = [spec.name for spec in specs if spec.needs and spec.needs.startswith("tinyBenchmarks")]
    if tiny and limit is not None and limit < 100:
        raise ValueError(f"limit={limit} would cut {tiny}, whose estimate needs all 100 items; pass limit=100 or None")
    for spec in specs:
        module = spec.needs.split()[0] if spec.needs else None
        if module and importlib.util.find_spec(module) is None:
            raise ImportError(f"task {spec.name!r} needs {spec.needs}; or use tasks='standard' or 'offline'")


class _ExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _EXPECTED)


@contextlib.contextmanager
def _quiet_lm_eval(progress: bool) -> Iterator[None]:
    """Within: lm-eval logs warnings and errors only (less the expected ones) and ``datasets`` draws no progress bar;
    lm-eval's bar over the model's requests stays when ``progress``, its per-task bars go. All put back after."""
    import datasets
    import lm_eval.api.task as lm_task
    import lm_eval.evaluator
    import lm_eval.models.huggingface  # noqa: F401 - their loggers must exist before the filters go on
    from tqdm.auto import tqdm

    lm_logger, quiet = logging.getLogger("lm_eval"), _ExpectedWarnings()
    level, bars_on = lm_logger.level, datasets.is_progress_bar_enabled()
    lm_logger.setLevel(logging.WARNING)
    # a logger's filter sees only its own records: filter each of lm-eval's module loggers
    names = [name for name in list(logging.root.manager.loggerDict) if name.split(".")[0] == "lm_eval"]
    loggers = [logging.getLogger(name) for name in names]
    for each in loggers:
        each.addFilter(quiet)
    datasets.disable_progress_bars()
    task_bar = getattr(lm_task, "tqdm", None)
    if task_bar is not None:  # the bar over building each task's requests: instant here, and one per task
        lm_task.tqdm = functools.partial(tqdm, disable=True)
    # simple_evaluate ends by recording the machine (torch's collect_env runs pip) and the git hash: ~0.5 s a call
    # for figures we never read, which every stage would pay
    env_info, git_hash = lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash = (lambda storage: None), (lambda: None)
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash = env_info, git_hash
        if task_bar is not None:
            lm_task.tqdm = task_bar
        if bars_on:
            datasets.enable_progress_bars()
        for each in loggers:
            each.removeFilter(quiet)
        lm_logger.setLevel(level)


def _harness_model(model: Any, tokenizer: Any, batch_size: int, progress: bool) -> Any:
    """Return lm-eval's ``HFLM`` around ``model`` (one bar over all requests when ``progress``). The tokenizer is
    copied when it lacks a pad token, which HFLM would otherwise set on the caller's own."""
    from lm_eval.models.huggingface import HFLM

    class _InMemoryLM(HFLM):
        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            return super().loglikelihood(requests, disable_tqdm=True)  # no "Tokenizing inputs" bar

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: Any = None) -> list:
            return super()._loglikelihood_tokens(requests, disable_tqdm=not progress, override_bs=override_bs)

    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)
    return _InMemoryLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _scores(results: dict[str, Any], specs: Sequence[TaskSpec]) -> dict[str, TaskScore]:
    """Return the TaskScores of lm-eval's ``results`` (of ``simple_evaluate``), by our task names."""
    scores = {}
    for spec in specs:
        measured = results["results"][spec.harness_name]
        samples = results.get("n-samples", {}).get(spec.harness_name, {})
        n = samples.get("effective", measured.get("sample_len", 0))
        scores[spec.name] = TaskScore.measured(spec, measured[f"{spec.metric},none"], n)
        logger.info("%s", scores[spec.name])
    return scores


def task_accuracy(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str] = "offline",
    *,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, TaskScore]:
    """Return ``{task: TaskScore}``: zero-shot accuracy of ``model`` (in memory, on its own device) on ``tasks``.

    ``tasks`` is a preset (``"offline"``: the five local tasks, built here; ``"standard"``, ``"tiny"``: lm-eval's
    from the Hugging Face Hub), a task name or a list of names (:data:`~.tasks.TASKS`). ``limit`` items per task at
    most (None: all). The model's train/eval mode is put back afterwards. ImportError without ``lm_eval`` (install
    with ``pip install "colab-helpers[eval]"``); ConnectionError for hub tasks when the hub cannot be had.
    """
    specs = resolve_tasks(tasks)
    check_positive_integer(limit, "limit", optional=True, fix="e.g. limit=100 items per task, or None for all")
    check_positive_integer(batch_size, "batch_size", fix="e.g. batch_size=16")
    check_hub_tasks(specs)
    require_lm_eval()
    _check_needs(specs, limit)
    import lm_eval
    from lm_eval.tasks import TaskManager

    was_training = model.training
    try:
        with tempfile.TemporaryDirectory(prefix="colab-tasks-") as folder, _quiet_lm_eval(progress):
            write_local_tasks(specs, folder, limit=limit)
            hub = any(not spec.local for spec in specs)
            manager = TaskManager(include_path=folder, include_defaults=hub)
            results = lm_eval.simple_evaluate(
                model=_harness_model(model, tokenizer, batch_size, progress),
                tasks=[spec.harness_name for spec in specs],
                task_manager=manager,
                limit=limit if hub else None,  # local tasks are built with `limit` items already
                log_samples=False,
                bootstrap_iters=0,  # no bootstrap: the interval is Wilson's, computed here
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,  # leave the caller's generators
            )  # fmt: skip
    finally:
        model.train(was_training)
    return _scores(results, specs)
