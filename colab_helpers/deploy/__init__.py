"""Stage 6, deploy: ship the smaller model. Export it as a folder plain transformers loads or as GGUF for
llama.cpp, serve it over an OpenAI-compatible HTTP API with batching and Prometheus metrics, load-test the server
and report what it measured.

- :mod:`.cli` -- ``python -m colab_helpers export | serve | loadtest | soak | report`` (beside the experiments' commands);
- :mod:`.loadtest` -- the load test (asyncio httpx, loopback only) and its config; :mod:`.loadresult` its typed
  results and files; :mod:`.monitor` the server's ``/metrics`` sampled during it; :mod:`.report` figures and HTML;
  :mod:`.loopback` the check that keeps both on this machine; :mod:`.reliability` the soak and the kill -9 drill;
- :mod:`.export` -- ``export_model``: a transformers folder (:mod:`.export_hf`) or GGUF (:mod:`.export_gguf`);
- :mod:`.server` -- the OpenAI-compatible FastAPI app and ``ServeConfig``; :mod:`.engine` the batching scheduler,
  :mod:`.growing_cache` its KV cache appended in place, :mod:`.output_layer` the output layer tuned for few rows;
  :mod:`.openai_api` request checks and answer shapes; :mod:`.serve_cli` ``serve``; :mod:`.launch` ``start_server``
  (a server in the background);
- :mod:`.prepare` -- the compressed model to serve (notebook 08's newest, else compressed here without recovery).
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module; loaded on first use (serving imports FastAPI, export imports transformers / gguf)
_NAMES: dict[str, str] = {
    "export_model": "export", "ExportResult": "export",
    "LoadTestConfig": "loadtest", "run_load_test": "loadtest", "levels_table": "loadtest",
    "LoadTestResult": "loadresult", "load_results": "loadresult", "MetricsSampler": "monitor",
    "start_server": "launch", "ServerHandle": "launch", "ServeConfig": "server", "create_app": "server",
    "Engine": "engine", "SamplingParams": "engine",
    "SoakConfig": "reliability", "run_soak": "reliability", "crash_and_restart": "reliability",
    "write_deployment_report": "report", "model_to_serve": "prepare", "compress_for_serving": "prepare",
}  # fmt: skip
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
