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
    "detect_environment": "runtime.environment",
    "EnvironmentReport": "runtime.environment",
    "Recommendations": "runtime.environment",
    # memory
    "MemorySnapshot": "runtime.memory",
    "memory_snapshot": "runtime.memory",
    "show_memory": "runtime.memory",
    "track_peak_memory": "runtime.memory",
    "free_memory": "runtime.memory",
    "format_bytes": "runtime.memory",
    "PeakMemory": "runtime.memory",
    # CUDA fallback
    "is_cuda_error": "runtime.cuda_fallback",
    "is_cuda_oom": "runtime.cuda_fallback",
    "CudaFallbackError": "runtime.cuda_fallback",
    "cuda_fallback": "runtime.cuda_fallback",
    "safe_generate": "runtime.cuda_fallback",
    "GenerationResult": "runtime.cuda_fallback",
    # downloads
    "bundle": "runtime.downloads",
    "download": "runtime.downloads",
    "persist_to_drive": "runtime.downloads",
    "drive_results_dir": "runtime.downloads",
    # live plots
    "LivePlot": "plots.live",
    # models and data
    "load_model": "models.loading",
    "generation_latency": "evaluation.latency",
    "available_models": "models.loading",
    "load_text_dataset": "evaluation.data",
    "available_datasets": "evaluation.data",
    "TextDataset": "evaluation.data",
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
    "compress": "pruning",
    "CompressReport": "pruning",
    "mlp_importance": "pruning",
    "select_mlp_channels": "pruning",
    "gate_mlp": "pruning",
    "remove_mlp_channels": "pruning",
    "MlpReport": "pruning",
    "layer_importance": "pruning",
    "skip_layers": "pruning",
    "remove_layers": "pruning",
    "LayerReport": "pruning",
    "forward_flops": "pruning",
    # evaluation and figures
    "perplexity": "evaluation.perplexity",
    "PerplexityResult": "evaluation.perplexity",
    "tokenize_texts": "evaluation.perplexity",
    "lm_batches": "evaluation.perplexity",
    "compare_generations": "evaluation.perplexity",
    "check_token_ids": "evaluation.perplexity",
    "plot_head_importance": "plots.pruning",
    "plot_importance_grid": "plots.pruning",
    "plot_pruned_per_layer": "plots.pruning",
    "plot_compression": "plots.compression",
    "plot_recovery_curves": "plots.compression",
    "plot_level_curves": "plots.pruning",
    # pruning studies
    "PruningStudyConfig": "pruning.study",
    "importance_by_strategy": "pruning.study",
    "mean_scores": "pruning.study",
    "level_sweep": "pruning.study",
    "summarize_levels": "pruning.study",
    "forward_latency": "evaluation.latency",
    "parameter_count": "runtime.modules",
    "model_device": "runtime.modules",
    "pruning_comparison": "pruning.study",
    # LoRA fine-tuning
    "FineTuneConfig": "finetune",
    "FineTuneResult": "finetune",
    "FineTuner": "finetune",
    "fine_tune": "finetune",
    "distill": "finetune",
    "DistillConfig": "finetune",
    "save_adapter": "finetune",
    "merge_adapter": "finetune",
    "save_merged": "finetune",
    # model catalog and memory estimates
    "catalog_table": "models.picking",
    "pick_model": "models.picking",
    "get_entry": "models.registry",
    "ModelPick": "models.picking",
    "CatalogEntry": "models.registry",
    "CATALOG": "models.registry",
    "estimate_memory": "models.memory_estimate",
    "MemoryEstimate": "models.memory_estimate",
    "measure_peak_memory": "models.peak_memory",
    # the prune-then-recover pipeline
    "PruningExperiment": "experiments.pipeline",
    "ExperimentConfig": "experiments.config",
    "PruningFineTuningExperiment": "experiments.sweep",
    "run_sweep": "experiments.sweep",
    "run_config": "experiments.sweep",
    # the spelling-transfer study
    "SpellingStudy": "spelling",
    "load_study_model": "spelling",
    # run tracking and sweep configs
    "RunManager": "experiments.tracking",
    "Run": "experiments.tracking",
    "read_runs": "experiments.tracking",
    "plot_gradient_norms": "finetune.gradients",
    "load_gradient_norms": "finetune.gradients",
    "load_config": "experiments.sweep_config",
    "load_sweep": "experiments.sweep_config",
    "merge": "experiments.sweep_config",
    "expand": "experiments.sweep_config",
    "SweepConfig": "experiments.sweep_config",
    # smoke mode
    "smoke_model": "smoke",
    "SMOKE_DATASET": "smoke",
    "SMOKE_EVAL_TOKENS": "smoke",
    # results on disk
    "ensure_writable_dir": "runtime.files",
    "save_results": "runtime.records",
    "to_jsonable": "runtime.records",
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
    from .models.picking import ModelPick, catalog_table, pick_model
    from .models.registry import CATALOG, CatalogEntry, get_entry
    from .evaluation.data import TextDataset, available_datasets, load_text_dataset
    from .runtime.downloads import bundle, download, drive_results_dir, persist_to_drive
    from .runtime.environment import EnvironmentReport, Recommendations, detect_environment
    from .runtime.cuda_fallback import GenerationResult, cuda_fallback, is_cuda_error, is_cuda_oom, safe_generate
    from .models.memory_estimate import MemoryEstimate, estimate_memory
    from .models.peak_memory import measure_peak_memory
    from .runtime.memory import (
        MemorySnapshot,
        PeakMemory,
        format_bytes,
        free_memory,
        memory_snapshot,
        show_memory,
        track_peak_memory,
    )
    from .models.loading import available_models, load_model
    from .runtime.files import ensure_writable_dir
    from .evaluation.perplexity import (
        PerplexityResult,
        check_token_ids,
        compare_generations,
        lm_batches,
        perplexity,
        tokenize_texts,
    )
    from .finetune import (
        DistillConfig,
        FineTuneConfig,
        FineTuner,
        FineTuneResult,
        distill,
        fine_tune,
        merge_adapter,
        save_adapter,
        save_merged,
    )
    from .experiments.sweep import PruningFineTuningExperiment, run_config, run_sweep
    from .plots.pruning import plot_head_importance, plot_importance_grid, plot_level_curves, plot_pruned_per_layer
    from .plots.compression import plot_compression, plot_recovery_curves
    from .experiments.config import ExperimentConfig
    from .experiments.pipeline import PruningExperiment
    from .plots.live import LivePlot
    from .spelling import SpellingStudy, load_study_model
    from .smoke import SMOKE_DATASET, SMOKE_EVAL_TOKENS, smoke_model
    from .pruning.study import PruningStudyConfig, importance_by_strategy, level_sweep, mean_scores, pruning_comparison, summarize_levels
    from .evaluation.latency import forward_latency, generation_latency
    from .runtime.modules import model_device, parameter_count
    from .pruning import (
        CompressReport,
        HeadGates,
        HeadLayout,
        LayerReport,
        MlpReport,
        PruneReport,
        compress,
        forward_flops,
        gate_heads,
        gate_mlp,
        layer_importance,
        mlp_importance,
        remove_layers,
        remove_mlp_channels,
        select_mlp_channels,
        skip_layers,
        head_importance,
        head_layout,
        load_pruned,
        normalize_scores,
        remove_heads,
        save_pruned,
        select_heads,
    )
    from .runtime.records import save_results, to_jsonable
    from .experiments.sweep_config import SweepConfig, expand, load_config, load_sweep, merge
    from .experiments.tracking import Run, RunManager, read_runs
    from .finetune.gradients import load_gradient_norms, plot_gradient_norms
