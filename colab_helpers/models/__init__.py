"""Stage 1, the model: one registry, loading, memory estimates and picking.

- :mod:`.registry` -- the models we know: catalog entries (shapes, for memory estimates before a download);
- :mod:`.packaged` -- real pretrained models that install offline from PyPI as GGUF files;
- :mod:`.loading` -- :func:`load_model` for embedded, packaged, hub and local (also pruned) models;
- :mod:`.memory_estimate` -- peak memory for inference, LoRA, QLoRA and full training;
- :mod:`.picking` -- :func:`~.picking.pick_model`, the largest catalog model that fits this runtime.

This package was the module ``colab_helpers.models``: its names stay importable from here.
"""

from __future__ import annotations

from .loading import EMBEDDED_MODELS, HUB_MODELS, ModelSpec, available_models, load_model, resolve_model_name

__all__ = ["EMBEDDED_MODELS", "HUB_MODELS", "ModelSpec", "available_models", "load_model", "resolve_model_name"]
