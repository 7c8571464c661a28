"""Does LoRA fine-tuning on spelling teach a model letter positions and counts? Train, evaluate, sweep, analyse.

    study = SpellingStudy(model, tokenizer, data, "results/07", model_name="Qwen/Qwen2.5-0.5B-Instruct")
    study.baseline()                      # zero-shot accuracy of the untouched model, per task, with 95% CIs
    runs = study.run_sweep(default_sweep(num_runs=8))
    analysis = study.analyze()            # correlations, parameter effects, top configurations, figures
    analysis.save(study.results_dir)      # report.html (figures embedded) and summary.md

Training goes through :func:`~colab_helpers.finetune.fine_tune` on the spelling rows as (prompt, answer) pairs;
evaluation is batched greedy generation and exact match after :func:`normalize_answer`, per task with bootstrap
95% intervals; the references are the untouched model (*baseline*) and a *control* adapter trained as long on
plain text. The transfer metrics are each task's gain over both, with paired intervals (:func:`paired_gains`);
the analysis correlates them across runs (docs/spelling-transfer.md has the method and results).

Modules: :mod:`.words` (the shipped word list, filtering), :mod:`.questions` (tasks, templates, prompts, rows),
:mod:`.data` (settings, splits, the DatasetDict built, saved and loaded), :mod:`.config` (constants, run configs,
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
from .evaluation import (
    SMALL_MODEL_PARAMETERS,
    Evaluation,
    answer_budget,
    evaluate,
    generate_answers,
    small_model_threads,
    transfer_metrics,
)
from .questions import TASKS
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
