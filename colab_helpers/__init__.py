"""colab_helpers: make small causal LMs smaller without making them worse, in notebooks that run anywhere.

``import colab_helpers as ch`` gives the few names a notebook reaches for; everything else lives in its stage
sub-package, reached as an attribute (``ch.pruning.remove_layers``, ``ch.plots.plot_head_importance``). Names load
lazily, so the import stays cheap on a bare CPU machine: torch, transformers, peft, datasets and matplotlib are
imported only by the function that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import ColabHelpersWarning
from .lazy import lazy_exports

# The front door: public name -> module that defines it. The rest: ch.<stage>.<name>.
_NAMES: dict[str, str] = {
    # the machine
    "detect_environment": "runtime.environment",
    "show_memory": "runtime.memory",
    "track_peak_memory": "runtime.memory",
    "safe_generate": "runtime.cuda_fallback",
    "bundle": "runtime.downloads",
    "download": "runtime.downloads",
    "drive_results_dir": "runtime.downloads",
    "save_results": "runtime.records",
    "LivePlot": "plots.live",
    # measuring
    "load_text_dataset": "evaluation.data",
    "perplexity": "evaluation.perplexity",
    "compare_generations": "evaluation.perplexity",
    # the model
    "load_model": "models.loading",
    "pick_model": "models.picking",
    "estimate_memory": "models.memory_estimate",
    # pruning
    "head_importance": "pruning",
    "select_heads": "pruning",
    "gate_heads": "pruning",
    "remove_heads": "pruning",
    "compress": "pruning",
    "save_pruned": "pruning",
    "load_pruned": "pruning",
    # recovery
    "FineTuneConfig": "finetune",
    "fine_tune": "finetune",
    "DistillConfig": "finetune",
    "distill": "finetune",
    "merge_adapter": "finetune",
    # runs and sweeps
    "ExperimentConfig": "experiments.config",
    "HeadPruning": "experiments.config",
    "Compression": "experiments.config",
    "Experiment": "experiments.pipeline",
    "Sweep": "experiments.sweep",
    # the spelling-transfer study
    "SpellingStudy": "spelling",
}
# Stage sub-packages and base modules, reachable as ch.<name>.
_MODULES = ("runtime", "plots", "evaluation", "pruning", "models", "finetune", "experiments", "spelling", "deploy", "smoke",
            "errors", "checks")

__all__ = ["__version__", "ColabHelpersWarning", *_NAMES]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _MODULES)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import checks, errors, evaluation, experiments, finetune, models, plots, pruning, runtime, smoke, spelling
    from .evaluation.data import load_text_dataset
    from .evaluation.perplexity import compare_generations, perplexity
    from .experiments.config import Compression, ExperimentConfig, HeadPruning
    from .experiments.pipeline import Experiment
    from .experiments.sweep import Sweep
    from .finetune import DistillConfig, FineTuneConfig, distill, fine_tune, merge_adapter
    from .models.loading import load_model
    from .models.memory_estimate import estimate_memory
    from .models.picking import pick_model
    from .plots.live import LivePlot
    from .pruning import compress, gate_heads, head_importance, load_pruned, remove_heads, save_pruned, select_heads
    from .runtime.cuda_fallback import safe_generate
    from .runtime.downloads import bundle, download, drive_results_dir
    from .runtime.environment import detect_environment
    from .runtime.memory import show_memory, track_peak_memory
    from .runtime.records import save_results
    from .spelling import SpellingStudy
