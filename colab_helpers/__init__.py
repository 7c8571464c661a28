"""colab_helpers: measure the runtime, pick a model, prune attention heads, recover with LoRA, sweep.

Public names are loaded lazily so that ``import colab_helpers`` stays cheap on a bare CPU machine: torch,
transformers, peft, datasets, matplotlib, bitsandbytes and unsloth are imported only by the function that
needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ColabHelpersWarning, CudaFallbackWarning, OfflineFallbackWarning

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # environment
    "detect_environment": "environment",
    "EnvironmentReport": "environment",
    "Recommendations": "environment",
    # memory
    "MemorySnapshot": "memory",
    "memory_snapshot": "memory",
    "show_memory": "memory",
    "track_peak_memory": "memory",
    "free_memory": "memory",
    "format_bytes": "memory",
    "PeakMemory": "memory",
    # CUDA fallback
    "is_cuda_error": "fallback",
    "is_cuda_oom": "fallback",
    "CudaFallbackError": "fallback",
    "cuda_fallback": "fallback",
    "safe_generate": "fallback",
    "GenerationResult": "fallback",
    # downloads
    "bundle": "downloads",
    "download": "downloads",
    "persist_to_drive": "downloads",
    "drive_results_dir": "downloads",
    # live plots
    "LivePlot": "plotting",
    # models and data
    "load_model": "models",
    "generation_latency": "latency",
    "available_models": "models",
    "load_text_dataset": "data",
    "available_datasets": "data",
    "TextDataset": "data",
    # head pruning
    "head_layout": "pruning",
    "HeadLayout": "pruning",
    "head_importance": "pruning",
    "select_heads": "pruning",
    "normalize_scores": "pruning",
    "gate_heads": "pruning",
    "HeadGates": "pruning",
    "remove_heads": "pruning",
    "PruneReport": "pruning",
    "save_pruned": "pruning",
    "load_pruned": "pruning",
    # evaluation and figures
    "perplexity": "evaluation",
    "PerplexityResult": "evaluation",
    "tokenize_texts": "evaluation",
    "lm_batches": "evaluation",
    "compare_generations": "evaluation",
    "plot_head_importance": "figures",
    "plot_importance_grid": "figures",
    "plot_pruned_per_layer": "figures",
    "plot_level_curves": "figures",
    # pruning studies
    "importance_by_strategy": "study",
    "mean_scores": "study",
    "level_sweep": "study",
    "summarize_levels": "study",
    "forward_latency": "study",
    "parameter_count": "study",
    "pruning_comparison": "study",
    # LoRA fine-tuning
    "FineTuneConfig": "finetune",
    "FineTuneResult": "finetune",
    "FineTuner": "finetune",
    "fine_tune": "finetune",
    "save_adapter": "finetune",
    "merge_adapter": "finetune",
    "save_merged": "finetune",
    # model catalog and memory estimates
    "catalog_table": "catalog",
    "pick_model": "catalog",
    "get_entry": "catalog",
    "ModelPick": "catalog",
    "CatalogEntry": "catalog",
    "CATALOG": "catalog",
    "estimate_memory": "memory_estimate",
    "MemoryEstimate": "memory_estimate",
    "measure_peak_memory": "memory_estimate",
    # the prune-then-recover pipeline
    "PruningExperiment": "pipeline",
    "ExperimentConfig": "pipeline",
    "PruningFineTuningExperiment": "experiments",
    "run_sweep": "experiments",
    "run_config": "experiments",
    # the spelling-transfer study
    "SpellingStudy": "spelling_study",
    "load_study_model": "spelling_study",
    # run tracking and sweep configs
    "RunManager": "tracking",
    "Run": "tracking",
    "read_runs": "tracking",
    "plot_gradient_norms": "tracking",
    "load_gradient_norms": "tracking",
    "load_config": "sweeps",
    "load_sweep": "sweeps",
    "merge": "sweeps",
    "expand": "sweeps",
    "SweepConfig": "sweeps",
    # results on disk
    "ensure_writable_dir": "_io",
    "save_results": "results",
    "to_jsonable": "results",
}

__all__ = [
    "__version__",
    "ColabHelpersWarning",
    "CudaFallbackWarning",
    "OfflineFallbackWarning",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'colab_helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # cache: the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .catalog import CATALOG, CatalogEntry, ModelPick, catalog_table, get_entry, pick_model
    from .data import TextDataset, available_datasets, load_text_dataset
    from .downloads import bundle, download, drive_results_dir, persist_to_drive
    from .environment import EnvironmentReport, Recommendations, detect_environment
    from .fallback import GenerationResult, cuda_fallback, is_cuda_error, is_cuda_oom, safe_generate
    from .memory_estimate import MemoryEstimate, estimate_memory, measure_peak_memory
    from .memory import (
        MemorySnapshot,
        PeakMemory,
        format_bytes,
        free_memory,
        memory_snapshot,
        show_memory,
        track_peak_memory,
    )
    from .models import available_models, load_model
    from ._io import ensure_writable_dir
    from .evaluation import PerplexityResult, compare_generations, lm_batches, perplexity, tokenize_texts
    from .finetune import (
        FineTuneConfig,
        FineTuner,
        FineTuneResult,
        fine_tune,
        merge_adapter,
        save_adapter,
        save_merged,
    )
    from .experiments import PruningFineTuningExperiment, run_config, run_sweep
    from .figures import plot_head_importance, plot_importance_grid, plot_level_curves, plot_pruned_per_layer
    from .pipeline import ExperimentConfig, PruningExperiment
    from .plotting import LivePlot
    from .spelling_study import SpellingStudy, load_study_model
    from .study import (
        forward_latency,
        importance_by_strategy,
        level_sweep,
        mean_scores,
        parameter_count,
        pruning_comparison,
        summarize_levels,
    )
    from .latency import generation_latency
    from .pruning import (
        HeadGates,
        HeadLayout,
        PruneReport,
        gate_heads,
        head_importance,
        head_layout,
        load_pruned,
        normalize_scores,
        remove_heads,
        save_pruned,
        select_heads,
    )
    from .results import save_results, to_jsonable
    from .sweeps import SweepConfig, expand, load_config, load_sweep, merge
    from .tracking import Run, RunManager, load_gradient_norms, plot_gradient_norms, read_runs
