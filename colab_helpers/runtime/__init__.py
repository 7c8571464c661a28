"""Stage 0, the machine: what we run on and how to live with it.

- :mod:`.environment` -- detecting the runtime, accelerator, memory and package versions;
- :mod:`.environment_report` -- the report of what was detected, its displays, and what it allows;
- :mod:`.memory` -- RAM / GPU / disk figures, peak memory of a block, freeing caches;
- :mod:`.cuda_fallback` -- one predicate for CUDA failures, a retry on the CPU;
- :mod:`.downloads` -- one zip of a run, a download that suits where we run, a copy to Drive;
- :mod:`.hub` -- can the Hugging Face Hub be reached (cached);
- :mod:`.kernel` -- is a notebook kernel running this code, is the run marked headless;
- :mod:`.secrets` -- secret names and the redactor for everything we write or show;
- :mod:`.files` -- atomic writes and writable-directory checks;
- :mod:`.records` -- plain-JSON conversion and saved result files;
- :mod:`.modules` -- facts about a loaded torch module: its device and parameter count;
- :mod:`.notebooks` -- headless notebook execution (papermill) for the tests and ``make demo``.

Everything here imports only the standard library at import time, and nothing from the later stages.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module; loaded on first use (several modules import psutil, torch or IPython when they run)
_NAMES: dict[str, str] = {
    "detect_environment": "environment", "EnvironmentReport": "environment_report",
    "Recommendations": "environment_report",
    "memory_snapshot": "memory", "show_memory": "memory", "track_peak_memory": "memory", "free_memory": "memory",
    "format_bytes": "memory", "MemorySnapshot": "memory", "PeakMemory": "memory",
    "is_cuda_error": "cuda_fallback", "is_cuda_oom": "cuda_fallback", "cuda_fallback": "cuda_fallback",
    "safe_generate": "cuda_fallback", "GenerationResult": "cuda_fallback", "CudaFallbackError": "cuda_fallback",
    "bundle": "downloads", "download": "downloads", "persist_to_drive": "downloads", "drive_results_dir": "downloads",
    "save_results": "records", "to_jsonable": "records", "ensure_writable_dir": "files",
    "model_device": "modules", "parameter_count": "modules",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
