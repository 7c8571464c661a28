"""Stage 1, the model: one registry, loading (pruned folders too, via :mod:`colab_helpers.pruning`), memory, picking.

- :mod:`.registry` -- the models we know: catalog entries (shapes, for memory estimates before a download);
- :mod:`.packaged` -- real pretrained models that install offline from PyPI as GGUF files;
- :mod:`.loading` -- :func:`load_model` for embedded, packaged, hub and local (also pruned) models;
- :mod:`.shapes` -- a model's shape however it is given (catalog name, config, loaded model), LoRA targets;
- :mod:`.memory_estimate` -- peak memory for inference, LoRA, QLoRA and full training;
- :mod:`.peak_memory` -- the harness that measures a case for real in a fresh process (checks the estimates);
- :mod:`.picking` -- :func:`~.picking.pick_model`, the largest catalog model that fits this runtime.
"""

from __future__ import annotations

from .loading import available_models, load_model, resolve_model_name
from .memory_estimate import MemoryEstimate, estimate_memory
from .peak_memory import measure_peak_memory
from .picking import ModelPick, catalog_table, pick_model
from .registry import CATALOG, EMBEDDED_MODELS, CatalogEntry, get_entry

__all__ = ["CATALOG", "EMBEDDED_MODELS", "CatalogEntry", "MemoryEstimate", "ModelPick", "available_models", "catalog_table",
           "estimate_memory", "get_entry", "load_model", "measure_peak_memory", "pick_model", "resolve_model_name"]
