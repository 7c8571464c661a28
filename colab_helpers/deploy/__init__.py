"""Stage 6, deploy: ship the smaller model. Export it as a folder plain transformers loads or as GGUF for
llama.cpp, serve it over an OpenAI-compatible HTTP API with batching and Prometheus metrics, load-test the server
and report what it measured.

- :mod:`.cli` -- ``python -m colab_helpers export | serve | loadtest | report`` (beside the experiments' commands).
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module; loaded on first use (serving imports FastAPI, export imports transformers / gguf)
_NAMES: dict[str, str] = {}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
