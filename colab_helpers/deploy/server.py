"""The OpenAI-compatible HTTP server (FastAPI): ``/v1/completions`` and ``/v1/chat/completions`` (streamed by
server-sent events with ``stream: true``), ``/v1/models``, ``/health`` (200 once the model is loaded, 503 while it
loads or shuts down) and ``/metrics`` (Prometheus text), in front of one :class:`~.engine.Engine`.

Bodies are checked before any work (:mod:`.openai_api`: 4xx naming the field); past ``max_queue`` waiting requests
the answer is 429 with ``Retry-After``. With an API key, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer
KEY`` (``/health`` stays open for readiness probes). ``model`` in a request may name anything: one model is served
and every answer carries its name.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import check_choice, check_integer, check_positive_integer, check_positive_number, field_help
from .engine import Engine, EngineStoppedError, Event, QueueFullError
from .loopback import is_loopback
from .openai_api import (DONE, ApiError, ParsedRequest, answer, chat_prompt_ids, chunk, new_id, parse_body, parse_chat,
                         parse_completion)

logger = logging.getLogger(__name__)

API_KEY_ENV = "COLAB_HELPERS_API_KEY"
DTYPES = ("auto", "float32", "float16", "bfloat16")
RETRY_AFTER_S = 1  # what a shed client is told to wait: the shortest Retry-After there is (whole seconds)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class ServeConfig:
    """How ``python -m colab_helpers serve`` serves a model; checked on creation."""

    model: str = field(metadata=field_help("a folder the suite saved, or a name load_model accepts"))
    host: str = field(default="127.0.0.1", metadata=field_help("address to bind; not loopback needs api_key"))
    port: int = field(default=8000, metadata=field_help("TCP port; 0 picks a free one"))
    max_batch_size: int = field(default=16, metadata=field_help("sequences decoded together"))
    max_queue: int = field(default=64, metadata=field_help("requests waiting; past it 429"))
    max_tokens: int = field(default=512, metadata=field_help("the most a request's max_tokens may ask"))
    default_max_tokens: int = field(default=128, metadata=field_help("max_tokens of a request that sends none"))
    device: str | None = field(default=None, metadata=field_help("cpu, cuda, cuda:1; None: CUDA when available"))
    dtype: str = field(default="auto", metadata=field_help("auto, float32, float16 or bfloat16"))
    api_key: str | None = field(default=None, repr=False, metadata=field_help("Bearer key; required off loopback"))
    served_name: str | None = field(default=None, metadata=field_help("model name in answers; default the folder's"))
    max_body_bytes: int = field(default=1_000_000, metadata=field_help("largest request body; past it 413"))
    shutdown_timeout: float = field(default=60.0, metadata=field_help("seconds to finish requests in flight"))

    def __post_init__(self) -> None:
        from ..models.loading import check_model_name

        check_model_name(self.model, what="model")  # a typo or a missing folder, before any port is bound
        check_integer(self.port, "port", least=0, fix="a TCP port such as 8000, or 0 for a free one")
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, got {self.port}; e.g. --port 8000")
        for name in ("max_batch_size", "max_queue", "max_tokens", "default_max_tokens", "max_body_bytes"):
            check_positive_integer(getattr(self, name), name, fix=f"e.g. {name}={getattr(type(self), name)}")
        check_positive_number(self.shutdown_timeout, "shutdown_timeout", fix="e.g. shutdown_timeout=60")
        check_choice(self.dtype, DTYPES, "dtype", fix="'auto' picks float32 on the CPU, bfloat16 on recent GPUs")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise ValueError("api_key must be a string of at least 8 characters (its value is not shown)")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be an address such as '127.0.0.1', got {self.host!r}")
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"host {self.host!r} is not a loopback address, so anyone who reaches it could use the "
                             f"model: set an API key (--api-key, or the environment variable {API_KEY_ENV}), or "
                             "bind --host 127.0.0.1")  # fmt: skip

    @property
    def model_id(self) -> str:
        """The name answers carry: ``served_name``, else the model folder's name, else the model name."""
        return self.served_name or Path(self.model.rstrip("/\\")).name or self.model


class ServerMetrics:
    """The server's Prometheus metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        name = "colab_helpers_"
        self.requests = Counter(f"{name}requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter(f"{name}tokens", "tokens read and written", ["kind"], registry=self.registry)
        self.queue_depth = Gauge(f"{name}queue_depth", "requests waiting to be admitted", registry=self.registry)
        self.active = Gauge(f"{name}active_sequences", "sequences in the running batch", registry=self.registry)
        self.batch_size = Histogram(f"{name}batch_size", "sequences per decode step", buckets=BATCH_BUCKETS,
                                    registry=self.registry)  # fmt: skip
        self.latency = Histogram(f"{name}request_latency_seconds", "end-to-end latency of a generation request",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.ttft = Histogram(f"{name}time_to_first_token_seconds", "time from request to first text",
                              buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.shed = Counter(f"{name}shed", "requests refused with 429 (queue full)", registry=self.registry)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)

    def watch(self, engine: Engine) -> None:
        """Read queue depth and running sequences from ``engine``, and its batch size at every step."""
        self.queue_depth.set_function(lambda: engine.queue_depth)
        self.active.set_function(lambda: engine.active_sequences)
        engine.add_step_listener(self.batch_size.observe)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _State:
    """What the routes share: the engine once loaded, the config, the metrics, whether shutdown began."""

    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.config, self.metrics = config, metrics
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.draining = False
        self.started = int(time.time())


def create_app(engine: Engine | Callable[[], Engine], config: ServeConfig,
               on_load_error: Callable[[BaseException], None] | None = None) -> Any:  # fmt: skip
    """The FastAPI app serving ``engine``; pass a function that builds the engine to load it in the background
    (``/health`` answers 503 until it is ready; ``on_load_error`` is called if it fails). The app starts the engine
    and, at shutdown, lets it finish every request in flight. ``app.state.serving.draining = True`` turns new
    generation requests away with 503 (the CLI sets it on SIGTERM / SIGINT)."""
    from fastapi import FastAPI

    state = _State(config, ServerMetrics())

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if isinstance(engine, Engine):
            _ready(state, engine)
        else:
            threading.Thread(target=_load, args=(state, engine, on_load_error), daemon=True).start()
        yield
        state.draining = True
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop, drain=True, timeout=config.shutdown_timeout)

    app = FastAPI(title="colab_helpers server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serving = state
    _add_middleware(app, state)
    _add_routes(app, state)
    return app


def _ready(state: _State, engine: Engine) -> None:
    state.metrics.watch(engine)
    state.engine = engine.start()


def _load(state: _State, build: Callable[[], Engine], on_error: Callable[[BaseException], None] | None) -> None:
    try:
        _ready(state, build())
    except BaseException as exc:  # noqa: BLE001 - reported through /health and on_error, never lost
        logger.exception("loading the model failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        if on_error is not None:
            on_error(exc)


_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


def _add_middleware(app: Any, state: _State) -> None:
    """Count every answer by endpoint and status; check the API key on ``/v1/*`` and ``/metrics``."""
    from fastapi.responses import JSONResponse

    key = (state.config.api_key or "").encode()

    @app.middleware("http")
    async def count_and_guard(request: Any, call_next: Callable[[Any], Any]) -> Any:
        path = request.url.path
        endpoint = path if path in _ENDPOINTS else "other"
        if key and path != "/health" and not _authorized(request.headers.get("authorization", ""), key):
            error = ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                             "authorization", "authentication_error")  # fmt: skip
            response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        state.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response


def _authorized(header: str, key: bytes) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key)


def _add_routes(app: Any, state: _State) -> None:
    """The five endpoints, as plain Starlette routes (a request in, a response out: nothing for FastAPI to infer)."""
    from fastapi.responses import JSONResponse, Response

    async def health(request: Any) -> Any:
        if state.engine is not None and not state.draining and state.engine.accepting:
            return JSONResponse({"status": "ok", "model": state.config.model_id})
        status = "failed: " + state.load_error if state.load_error else "shutting down" if state.draining else "loading"
        return JSONResponse({"status": status}, status_code=503)

    async def metrics(request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def models(request: Any) -> Any:
        card = {"id": state.config.model_id, "object": "model", "created": state.started, "owned_by": "colab_helpers"}
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(request: Any) -> Any:
        return await _generate(request, state, chat=False)

    async def chat_completions(request: Any) -> Any:
        return await _generate(request, state, chat=True)

    for path, handler, method in [("/health", health, "GET"), ("/metrics", metrics, "GET"), ("/v1/models", models, "GET"),
                                  ("/v1/completions", completions, "POST"),
                                  ("/v1/chat/completions", chat_completions, "POST")]:  # fmt: skip
        app.add_route(path, handler, methods=[method])


async def _generate(request: Any, state: _State, *, chat: bool) -> Any:
    """Check the body, queue the request, answer whole or streamed; every refusal is an OpenAI error object."""
    from fastapi.responses import JSONResponse

    started = time.perf_counter()
    try:
        engine = _serving_engine(state)
        parsed = _parse(await request.body(), state.config, chat)
        ids = _prompt_ids(engine, parsed)
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            ticket = engine.submit(ids, parsed.params, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        except (QueueFullError, EngineStoppedError, ValueError) as exc:
            raise _submit_errors(exc) from exc
    except ApiError as error:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 429 else None
        if error.status == 429:
            state.metrics.shed.inc()
        return JSONResponse(error.body(), status_code=error.status, headers=headers)
    answer_id, model = new_id(chat), state.config.model_id
    run = _Run(state, events, ticket, started)
    if parsed.stream:
        from fastapi.responses import StreamingResponse

        return StreamingResponse(run.stream(chat, answer_id, model), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip
    text, last = await run.collect()
    if last.error:
        return JSONResponse(ApiError(500, f"generation failed: {last.error}", None, "server_error").body(), 500)
    return JSONResponse(answer(chat, answer_id, model, text, last.finish_reason,
                               (last.prompt_tokens, last.completion_tokens)))  # fmt: skip


def _serving_engine(state: _State) -> Engine:
    if state.engine is None or state.draining or not state.engine.accepting:
        why = "is shutting down" if state.draining or state.engine is not None else "is still loading the model"
        raise ApiError(503, f"the server {why}; try again later", None, "server_error")
    return state.engine


def _parse(raw: bytes, config: ServeConfig, chat: bool) -> ParsedRequest:
    body = parse_body(raw, config.max_body_bytes)
    parse = parse_chat if chat else parse_completion
    return parse(body, config.max_tokens, config.default_max_tokens)


def _prompt_ids(engine: Engine, parsed: ParsedRequest) -> list[int]:
    """The prompt's token ids, checked against the vocabulary and the model's context."""
    tokenizer = engine.tokenizer
    if parsed.messages:
        ids, field_name = chat_prompt_ids(tokenizer, parsed.messages), "messages"
    elif isinstance(parsed.prompt, str):
        ids, field_name = list(tokenizer(parsed.prompt)["input_ids"]), "prompt"
    else:
        ids, field_name = list(parsed.prompt or []), "prompt"
        vocab = engine.model.get_input_embeddings().num_embeddings
        if max(ids) >= vocab:
            raise ApiError(400, f"prompt holds token id {max(ids)}, past the vocabulary of {vocab}", "prompt")
    if not ids or len(ids) >= engine.context_length:
        raise ApiError(400, f"{field_name} is {len(ids)} tokens long; the model reads at most {engine.context_length} "
                       f"tokens, prompt and answer together: shorten it", field_name)  # fmt: skip
    return ids


def _submit_errors(exc: Exception) -> ApiError:
    if isinstance(exc, QueueFullError):
        return ApiError(429, f"the server is busy ({exc}); retry after {RETRY_AFTER_S} s", None, "rate_limit_error")
    if isinstance(exc, EngineStoppedError):
        return ApiError(503, str(exc), None, "server_error")
    return ApiError(400, str(exc), "prompt")


class _Run:
    """One admitted request on its way out: its events, and the metrics they feed (tokens, first token, latency)."""

    def __init__(self, state: _State, events: asyncio.Queue[Event], ticket: Any, started: float) -> None:
        self.metrics, self.events, self.ticket, self.started = state.metrics, events, ticket, started
        self.first = True

    async def next(self) -> Event:
        event = await self.events.get()
        if self.first and (event.text or event.finish_reason):
            self.first = False
            self.metrics.ttft.observe(time.perf_counter() - self.started)
        if event.finish_reason is not None:
            self.metrics.latency.observe(time.perf_counter() - self.started)
            self.metrics.tokens.labels(kind="prompt").inc(event.prompt_tokens)
            self.metrics.tokens.labels(kind="completion").inc(event.completion_tokens)
        return event

    async def collect(self) -> tuple[str, Event]:
        """The whole text and the last event."""
        parts = []
        try:
            while (event := await self.next()).finish_reason is None:
                parts.append(event.text)
        finally:
            self.ticket.cancel()  # a client gone before the end frees its row at the next step (no-op when done)
        return "".join(parts), event

    async def stream(self, chat: bool, answer_id: str, model: str) -> AsyncIterator[str]:
        """``data: {...}`` chunks, the last with ``finish_reason`` and usage, then ``data: [DONE]``."""
        try:
            if chat:
                yield chunk(chat, answer_id, model, None)
            while (event := await self.next()).finish_reason is None:
                yield chunk(chat, answer_id, model, event.text)
            if event.error:
                yield f"data: {json.dumps(ApiError(500, event.error, None, 'server_error').body())}\n\n"
            else:
                yield chunk(chat, answer_id, model, "", event.finish_reason, (event.prompt_tokens, event.completion_tokens))
            yield DONE
        finally:
            self.ticket.cancel()
