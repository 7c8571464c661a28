"""``python -m colab_helpers serve MODEL --host 127.0.0.1 --port 8000``: load a model the suite saved (pruned,
compressed, merged, fine-tuned, exported with its own modeling code) or any name ``load_model`` accepts, and serve
it (:mod:`.server`) with uvicorn until SIGTERM / SIGINT, which finishes the requests in flight first.

The API key comes from ``--api-key`` or, better (a command line is visible to every user of the machine), the
environment variable ``COLAB_HELPERS_API_KEY``; it is never printed or logged.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .server import API_KEY_ENV, DTYPES, ServeConfig

logger = logging.getLogger(__name__)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to ``commands`` (argparse sub-parsers); return its parser."""
    parser = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                                 description="Serve a model over an OpenAI-compatible HTTP API with batching.")  # fmt: skip
    parser.add_argument("model", help="a saved model folder, or a name load_model accepts (e.g. embedded-llama)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a key)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together (default 16)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)")
    parser.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask (512)")
    parser.add_argument("--default-max-tokens", type=int, default=128, help="max_tokens when a request sends none")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' dtype (default auto)")
    parser.add_argument("--api-key", default=None, help=f"Bearer key for /v1/* (better: the variable {API_KEY_ENV})")
    parser.add_argument("--served-name", default=None, help="the model's name in answers (default: the folder's)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The checked ServeConfig of parsed arguments (ValueError naming a bad one, before any model is loaded)."""
    return ServeConfig(model=args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                       max_queue=args.max_queue, max_tokens=args.max_tokens, default_max_tokens=args.default_max_tokens,
                       device=args.device, dtype=args.dtype, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                       served_name=args.served_name)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Serve until stopped; return the exit status (1 when the model failed to load)."""
    config = config_from_args(args)
    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: serving needs {', '.join(missing)}: pip install 'colab-helpers[serve]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(config, log_level=args.log_level)


def serve(config: ServeConfig, *, log_level: str = "info") -> int:
    """Run the server of ``config`` in this process until SIGTERM / SIGINT; 1 when the model failed to load."""
    import uvicorn

    from .engine import Engine
    from .output_layer import tune_output_layer
    from .server import create_app

    failed: list[BaseException] = []

    def build() -> Engine:
        model, tokenizer = load_for_serving(config.model, device=config.device, dtype=config.dtype)
        tune_output_layer(model, config.max_batch_size)  # the server owns this model: tune it for its batch sizes
        return Engine(model, tokenizer, max_batch_size=config.max_batch_size, max_queue=config.max_queue)

    def on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(build, config, on_load_error=on_load_error)
    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                    timeout_graceful_shutdown=config.shutdown_timeout, access_log=False)  # fmt: skip
    server = uvicorn.Server(uvicorn_config)
    stop_on_signal = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:  # turn new requests away (503) while uvicorn drains the rest
        app.state.serving.draining = True
        stop_on_signal(sig, frame)

    server.handle_exit = handle_exit
    logger.info("serving %r on http://%s:%d (API key %s)", config.model, config.host, config.port,
                "required" if config.api_key else "not required")  # fmt: skip
    server.run()
    if failed:
        print(f"error: could not load {config.model!r}: {type(failed[0]).__name__}: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def load_for_serving(name: str, *, device: str | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """``(model, tokenizer)`` to serve: a folder whose config.json has ``auto_map`` (modeling code shipped with it,
    as the HF export writes) loads with ``trust_remote_code``; anything else through ``load_model``."""
    from ..models import load_model

    folder = Path(name).expanduser()
    config_file = folder / "config.json"
    if config_file.is_file() and "auto_map" in json.loads(config_file.read_text(encoding="utf-8")):
        return _load_remote_code(folder, device, dtype)
    return load_model(name, device=device, dtype=dtype)


def _load_remote_code(folder: Path, device: str | None, dtype: str) -> tuple[Any, Any]:
    """Load a folder with its own modeling code, the way ``transformers serve --trust-remote-code`` would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = torch.float32 if dtype == "auto" and target.type == "cpu" else dtype
    logger.info("loading %s with the modeling code it ships (trust_remote_code)", folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch_dtype).to(target).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
