"""Two recovery recipes from the structured-pruning literature, built on ``compress`` and :func:`~.distill.distill`:

- :func:`correct_teacher` (Minitron's teacher correction): fine-tune a copy of the teacher on the distillation text
  before distilling, so the teacher's distributions match the text the student learns them on;
- :func:`compress_iteratively` (NVIDIA Model-Optimizer's advice above ~30% removed): reach the target in several
  rounds, each removing the same share of the parameters left, with distillation from the unpruned teacher between.

What they do to general ability on SmolLM2-135M-Instruct is measured in ``benchmarks/recovery_recipes.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import check_number, check_positive_integer
from .config import FineTuneConfig
from .distill import DistillConfig, distill
from .export import merge_adapter
from .result import FineTuneResult
from .trainer import fine_tune


def correct_teacher(teacher: Any, tokenizer: Any, texts: Any, config: FineTuneConfig, **options: Any) -> Any:
    """A copy of ``teacher`` fine-tuned on ``texts`` (LM loss; LoRA merged back, or every weight with
    ``config.method="full"``), frozen, ready to be :func:`~.distill.distill`'s teacher. ``teacher`` is untouched;
    ``options`` are :func:`~.trainer.fine_tune`'s (``progress``, ``live_plot``)."""
    result = fine_tune(copy.deepcopy(teacher), tokenizer, texts, None, config, **options)
    result.raise_if_failed()
    corrected = merge_adapter(result.model) if config.method == "lora" else result.model
    corrected.eval()
    for parameter in corrected.parameters():
        parameter.requires_grad_(False)
    return corrected


def round_targets(target_params: float, rounds: int) -> list[float]:
    """The share of the parameters *left* that each of ``rounds`` rounds keeps so that together they keep
    ``target_params``: the same share every round (``target_params ** (1 / rounds)``)."""
    target = check_number(target_params, "target_params", high=1.0, high_inclusive=True, fix="e.g. target_params=0.75")
    check_positive_integer(rounds, "rounds", fix="e.g. rounds=2")
    return [target ** (1 / rounds)] * rounds


@dataclass
class IterativeResult:
    """What :func:`compress_iteratively` did: the recovered model, and per round the compress report and the
    distillation's result."""

    model: Any
    reports: list[Any]
    trainings: list[FineTuneResult]

    @property
    def seconds(self) -> float:
        return sum(training.seconds for training in self.trainings)


def compress_iteratively(model: Any, teacher: Any, tokenizer: Any, calibration: list[Any], target_params: float,
                         texts: Any, config: FineTuneConfig, distill_config: DistillConfig | None = None, *,
                         rounds: int = 2, eval_batches: list[Any] | None = None, compress_options: dict | None = None,
                         **options: Any) -> IterativeResult:  # fmt: skip
    """Compress ``model`` in place to ``target_params`` of its parameters in ``rounds`` rounds, each followed by
    distillation from ``teacher`` (the unpruned model; never the student) for ``config.max_steps // rounds`` steps
    (and ``config.max_minutes / rounds`` minutes when a time budget is set), so the whole costs what one compress and
    one distillation of ``config`` would. ``calibration`` /
    ``eval_batches`` and ``compress_options`` are ``compress``'s, ``options`` :func:`~.distill.distill`'s."""
    from ..pruning.compress import compress

    shares = round_targets(target_params, rounds)
    if config.max_steps is None or config.max_steps < rounds:
        raise ValueError(f"config.max_steps must be at least rounds ({rounds}) to split it, got {config.max_steps!r}; "
                         "e.g. FineTuneConfig(max_steps=120)")  # fmt: skip
    steps = config.max_steps // rounds
    reports, trainings = [], []
    for index, share in enumerate(shares):
        reports.append(compress(model, calibration, share, eval_batches=eval_batches, **(compress_options or {})))
        minutes = config.max_minutes / rounds if config.max_minutes is not None else None
        round_config = dataclasses.replace(config, max_steps=steps, warmup_steps=min(config.warmup_steps, steps - 1),
                                           max_minutes=minutes,
                                           output_dir=str(Path(config.output_dir) / f"round-{index + 1}"))  # fmt: skip
        training = distill(model, teacher, tokenizer, texts, None, round_config, distill_config, **options)
        training.raise_if_failed()
        trainings.append(training)
        model = merge_adapter(training.model) if config.method == "lora" else training.model
    return IterativeResult(model=model, reports=reports, trainings=trainings)


__all__ = ["IterativeResult", "compress_iteratively", "correct_teacher", "round_targets"]
