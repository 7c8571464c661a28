"""Does LoRA fine-tuning on spelling teach a model letter positions and counts? Train, evaluate, sweep, analyse.

    study = SpellingStudy(model, tokenizer, data, "results/07", model_name="Qwen/Qwen2.5-0.5B-Instruct")
    study.baseline()                      # zero-shot accuracy of the untouched model, per task, with 95% CIs
    runs = study.run_sweep(default_sweep(num_runs=8))
    analysis = study.analyze()            # correlations, parameter effects, top configurations, figures
    analysis.save(study.results_dir)      # report.html (figures embedded) and summary.md

* **Training** goes through the suite's :func:`~colab_helpers.finetune.fine_tune` (unsloth on CUDA where
  supported, peft otherwise; early stopping on the validation loss of the spelling rows; checkpoints) on the
  spelling rows only, as (prompt, answer) pairs: one example per sequence, the loss on the answer only
  (``training.completion_only``; ``False`` trains on the packed texts, prompt included, as before).
* **Evaluation** is batched greedy generation (left padding, attention mask, a few new tokens) and exact match
  after :func:`normalize_answer`, never token-level argmax over the label; accuracy per task with a
  bootstrap 95% interval.
* **References**: the untouched model (the *baseline*) and a *control* adapter trained for the same number
  of steps on plain text (the embedded corpus), which separates "any fine-tuning" from "learning to spell".
  Both are recorded as runs of the sweep ``"reference"`` and reused when a sweep is run again.
* **Transfer metrics** per run: the gain of each task over the baseline and over the control, and the ratio
  of the position (count) gain to the spelling gain. The ratio is **None** when the spelling gain is within
  ``min_spelling_gain`` (2 points by default) of zero: dividing by noise would say nothing.
  ``study.gains(run_id, reference_run_id)`` gives the gains question by question with *paired* bootstrap
  intervals (:func:`paired_gains`), much tighter than comparing two accuracies' own intervals.
* **Analysis**: Pearson and Spearman correlations across runs with bootstrap intervals (numpy only), a
  per-parameter effect table, the top configurations, a scatter of spelling against transfer accuracy, an
  HTML report and a Markdown summary.

Modules: :mod:`.data` (the words, the question templates, the splits), :mod:`.config` (constants, run configs,
checks), :mod:`.answers` (normalisation, exact match), :mod:`.stats` (bootstrap intervals, correlations),
:mod:`.evaluation` (batched generation, scoring), :mod:`.training` (the study model, adapters, the control's text),
:mod:`.sweep` (:class:`SpellingStudy`), :mod:`.analysis` (tables, correlations, effects, :func:`analyze`),
:mod:`.report` (figures, HTML and Markdown).
"""

from __future__ import annotations

from .analysis import (
    accuracy_table,
    analyze,
    correlation_table,
    finished_runs,
    guess_baselines,
    paired_gains,
    parameter_effects,
    parameter_importance,
    results_table,
    top_configs,
)
from .answers import is_correct, normalize_answer
from .config import (
    CONTROL_MODES,
    DEFAULT_MODEL,
    METRICS,
    MIN_SPELLING_GAIN,
    OFFLINE_MODEL,
    REFERENCE_SWEEP,
    SEARCH_SPACE,
    SMOKE_SEARCH_SPACE,
    TRANSFER_TASKS,
    base_config,
    check_run_config,
    check_sweep,
    default_sweep,
    finetune_config,
    merge_steps,
)
from .data import TASKS
from .evaluation import (
    SMALL_MODEL_PARAMETERS,
    Evaluation,
    answer_budget,
    evaluate,
    generate_answers,
    small_model_threads,
    transfer_metrics,
)
from .report import TransferAnalysis, plot_parameter_effects, plot_spelling_vs_transfer, plot_task_accuracies
from .stats import accuracy_with_ci, bootstrap_ci, correlation_with_ci, paired_difference_ci, pearson, rank, spearman
from .sweep import SpellingStudy
from .training import completion_pairs, load_study_model

__all__ = [
    "CONTROL_MODES",
    "DEFAULT_MODEL",
    "METRICS",
    "MIN_SPELLING_GAIN",
    "OFFLINE_MODEL",
    "REFERENCE_SWEEP",
    "SEARCH_SPACE",
    "SMALL_MODEL_PARAMETERS",
    "SMOKE_SEARCH_SPACE",
    "TRANSFER_TASKS",
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
    "completion_pairs",
    "correlation_table",
    "correlation_with_ci",
    "default_sweep",
    "evaluate",
    "finetune_config",
    "finished_runs",
    "generate_answers",
    "guess_baselines",
    "is_correct",
    "load_study_model",
    "merge_steps",
    "normalize_answer",
    "paired_difference_ci",
    "paired_gains",
    "parameter_effects",
    "parameter_importance",
    "pearson",
    "plot_parameter_effects",
    "plot_spelling_vs_transfer",
    "plot_task_accuracies",
    "rank",
    "results_table",
    "small_model_threads",
    "spearman",
    "top_configs",
    "transfer_metrics",
]
