"""Load test of an OpenAI-compatible server on this machine: concurrency levels, each bounded in requests and
seconds; time to first token, inter-token latency and end-to-end latency per request; throughput per level.

Why an asyncio ``httpx`` client and not locust: it runs in-process (importable from a notebook, results come back
as typed objects, no web UI or worker processes), it times every streamed token (locust times whole requests),
a few hundred concurrent streams cost one thread, and httpx is already the serving extra's client (no extra
dependency). Loopback only: a load test is a denial of service when pointed at someone else's server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_choice, check_positive_integer, check_positive_number, field_help
from .loadresult import LevelSummary, LoadTestResult, RequestRecord, check_label
from .loopback import check_loopback

logger = logging.getLogger(__name__)

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
DEFAULT_PROMPTS = (
    "Write a short story about a robot who learns to paint.",
    "Explain in simple words why the sky is blue.",
    "List three tips for staying focused while studying.",
    "Describe the city you would like to visit and why.",
)
API_KEY_ENV = "COLAB_HELPERS_API_KEY"


@dataclass
class LoadTestConfig:
    """Settings of :func:`run_load_test`: which concurrency levels, how much load at each, what to ask."""

    concurrency: tuple[int, ...] = field(default=(1, 2, 4, 8, 16), metadata=field_help(
        "concurrency levels, run in this order: requests in flight at once"))
    requests_per_level: int = field(default=32, metadata=field_help(
        "requests sent at each level (a level also stops at max_seconds)"))
    max_seconds: float = field(default=60.0, metadata=field_help(
        "seconds after which a level starts no new request (requests in flight finish)"))
    max_tokens: int = field(default=64, metadata=field_help("max_tokens of every request"))
    prompts: tuple[str, ...] = field(default=DEFAULT_PROMPTS, metadata=field_help(
        "prompts, sent in turn (request i gets prompts[i % len(prompts)])"))
    stream: bool = field(default=True, metadata=field_help(
        "stream by server-sent events (needed for time to first token and inter-token latency)"))
    endpoint: str = field(default="completions", metadata=field_help(
        "'completions' (/v1/completions) or 'chat' (/v1/chat/completions)"))
    model: str = field(default="", metadata=field_help("the request's model field ('' asks /v1/models)"))
    ignore_eos: bool = field(default=True, metadata=field_help(
        "ask for exactly max_tokens tokens (vLLM's extension, which our server reads): models that stop at different "
        "points are compared on the same work"))
    api_key_env: str = field(default=API_KEY_ENV, metadata=field_help(
        "environment variable holding the server's API key (sent as Bearer when set; never saved or logged)"))
    request_timeout: float = field(default=120.0, metadata=field_help("seconds one request may take in all"))
    monitor_interval: float = field(default=0.5, metadata=field_help(
        "seconds between samples of the server's /metrics during the run; 0 samples nothing"))

    def __post_init__(self) -> None:
        levels = tuple(self.concurrency) if isinstance(self.concurrency, list | tuple) else (self.concurrency,)
        if not levels:
            raise ValueError("concurrency must list at least one level, got (); e.g. concurrency=(1, 2, 4, 8, 16)")
        self.concurrency = tuple(check_positive_integer(c, "concurrency level", fix="e.g. concurrency=(1, 2, 4)")
                                 for c in levels)  # fmt: skip
        check_positive_integer(self.requests_per_level, "requests_per_level", fix="e.g. requests_per_level=32")
        check_positive_number(self.max_seconds, "max_seconds", fix="e.g. max_seconds=60")
        check_positive_integer(self.max_tokens, "max_tokens", fix="e.g. max_tokens=64")
        check_positive_number(self.request_timeout, "request_timeout", fix="e.g. request_timeout=120")
        check_choice(self.endpoint, tuple(ENDPOINTS), "endpoint")
        if isinstance(self.prompts, str):
            self.prompts = (self.prompts,)
        self.prompts = tuple(self.prompts)
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError(f"prompts must be non-empty strings, got {self.prompts!r}; e.g. prompts=('Hello',)")
        if not (isinstance(self.monitor_interval, int | float) and self.monitor_interval >= 0):
            raise ValueError(f"monitor_interval must be a number >= 0, got {self.monitor_interval!r}; 0 turns it off")

    def smoke(self) -> LoadTestConfig:
        """A copy that finishes in seconds on the embedded toy model: levels 1 and 2, a few short requests."""
        from dataclasses import replace

        return replace(self, concurrency=(1, 2), requests_per_level=4, max_seconds=20.0, max_tokens=8)

    def settings(self) -> dict[str, Any]:
        """The settings as saved with the results (the key's variable name only, never its value)."""
        from dataclasses import asdict

        return {**asdict(self), "concurrency": list(self.concurrency), "prompts": list(self.prompts)}


def _headers(config: LoadTestConfig) -> dict[str, str]:
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _payload(config: LoadTestConfig, model: str, index: int) -> dict[str, Any]:
    prompt = config.prompts[index % len(config.prompts)]
    body: dict[str, Any] = {"model": model, "max_tokens": config.max_tokens, "stream": config.stream,
                            "temperature": 0.0}  # fmt: skip
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    """The text a streamed chunk adds (completions: ``text``; chat: ``delta.content``)."""
    choices = chunk.get("choices") or [{}]
    choice = choices[0] or {}
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _usage_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage") or {}
    tokens = usage.get("completion_tokens")
    return int(tokens) if isinstance(tokens, int) else None


async def _read_stream(response: Any, record: RequestRecord, started: float) -> None:
    """Read server-sent events: each chunk with text is one token's arrival (usage, when sent, is the count)."""
    last = None
    counted = 0
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        usage = _usage_tokens(chunk)
        record.output_tokens = usage if usage is not None else record.output_tokens
        if not _chunk_text(chunk):
            continue
        now = time.perf_counter()
        counted += 1
        if last is None:
            record.ttft = now - started
        else:
            record.token_gaps.append(now - last)
        last = now
    record.output_tokens = max(record.output_tokens, counted)


async def _one_request(client: Any, url: str, body: dict[str, Any], record: RequestRecord) -> None:
    """Send one request and fill ``record``; any failure becomes ``status="error"`` (never raises)."""
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            record.http_status = response.status_code
            if response.status_code == 429:
                record.status = "shed"
                await response.aread()
            elif response.status_code >= 400:
                record.status, record.error = "error", f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            elif body["stream"]:
                await _read_stream(response, record, started)
                record.status = "ok"
            else:
                payload = json.loads(await response.aread())
                record.output_tokens = _usage_tokens(payload) or 0
                record.ttft, record.status = time.perf_counter() - started, "ok"
    except Exception as exc:  # a dead server, a reset, a timeout, a malformed answer: counted, not raised
        record.status, record.error = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    record.latency = time.perf_counter() - started


async def _run_level(client: Any, url: str, config: LoadTestConfig, model: str, concurrency: int,
                     tick: Callable[[], None]) -> tuple[LevelSummary, list[RequestRecord]]:  # fmt: skip
    """Run one level: ``concurrency`` workers take request numbers until the count or the time is spent."""
    records: list[RequestRecord] = []
    counter = iter(range(config.requests_per_level))
    start = time.perf_counter()
    deadline = start + config.max_seconds

    async def worker() -> None:
        for index in counter:
            if time.perf_counter() >= deadline:
                return
            record = RequestRecord(concurrency=concurrency, index=index, status="error",
                                   start=time.perf_counter() - start)  # fmt: skip
            records.append(record)
            await _one_request(client, url, _payload(config, model, index), record)
            tick()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    duration = time.perf_counter() - start
    records.sort(key=lambda r: r.index)
    return LevelSummary.of(concurrency, records, duration), records


async def _model_name(client: Any, base: str) -> str:
    """The first model ``/v1/models`` lists ('' when it lists none or cannot be read)."""
    try:
        response = await client.get(f"{base}/v1/models")
        return str(response.json()["data"][0]["id"])
    except Exception:  # the name is only echoed back by most servers: a missing list is not fatal
        return ""


async def _run_levels(base: str, config: LoadTestConfig, tick: Callable[[], None]) -> tuple[list, list]:
    import httpx

    limits = httpx.Limits(max_connections=max(config.concurrency) + 2, max_keepalive_connections=max(config.concurrency))
    timeout = httpx.Timeout(config.request_timeout, connect=min(10.0, config.request_timeout))
    levels, records = [], []
    # trust_env=False: no proxy from the environment may carry loopback traffic elsewhere
    async with httpx.AsyncClient(headers=_headers(config), limits=limits, timeout=timeout, trust_env=False) as client:
        model = config.model or await _model_name(client, base)
        for concurrency in config.concurrency:
            summary, rows = await _run_level(client, base + ENDPOINTS[config.endpoint], config, model, concurrency, tick)
            logger.info("concurrency %d: %d ok, %d errors, %d shed, %.1f output tokens/s", concurrency, summary.ok,
                        summary.errors, summary.shed, summary.output_tokens_per_s)  # fmt: skip
            levels.append(summary)
            records += rows
    return levels, records


def _in_own_loop(coroutine_factory: Callable[[], Any]) -> Any:
    """Run the coroutine on a fresh event loop; in a thread when this one already runs a loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine_factory())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="colab-helpers-loadtest")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_load_test(url: str, config: LoadTestConfig | None = None, *, label: str = "server",
                  progress: bool = True) -> LoadTestResult:  # fmt: skip
    """Load-test the OpenAI-compatible server at ``url`` (this machine only) level by level; return the result.

    Every request is answered ("ok"), shed (HTTP 429) or failed ("error": any other status, a refused or broken
    connection, a timeout): a server that dies mid-run gives failures, not an exception. With
    ``config.monitor_interval`` the server's ``/metrics`` are sampled over the run (:class:`~.monitor.MetricsSampler`).
    """
    from datetime import datetime, timezone

    from .monitor import MetricsSampler

    base = check_loopback(url)
    config = config or LoadTestConfig()
    check_label(label)
    total = len(config.concurrency) * config.requests_per_level
    bar = _progress_bar(total, label, progress)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    sampler = MetricsSampler(base, interval=config.monitor_interval or 1.0)
    try:
        if config.monitor_interval:
            sampler.start()
        levels, records = _in_own_loop(lambda: _run_levels(base, config, bar.update if bar else lambda: None))
    finally:
        sampler.stop()
        if bar is not None:
            bar.close()
    return LoadTestResult(label=label, url=base, settings=config.settings(), levels=levels, requests=records,
                          monitor=sampler.samples, started=started)  # fmt: skip


def _progress_bar(total: int, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"load test {label}", unit="req")


def levels_table(results: Sequence[LoadTestResult]) -> Any:
    """One DataFrame of every result's levels, ``label`` first (the table notebooks and the CLI show)."""
    import pandas as pd

    frames = [result.levels_frame().assign(label=result.label) for result in results]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = ["label", "concurrency", "ok", "errors", "shed", "output_tokens_per_s", "requests_per_s",
               "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "latency_p50", "latency_p95", "latency_p99"]  # fmt: skip
    return frame[[c for c in columns if c in frame]] if len(frame) else frame


DEFAULT_OUT = "results/deployment"


def add_parser(commands: Any) -> None:
    """``python -m colab_helpers loadtest URL --label NAME ...``."""
    defaults = LoadTestConfig()
    parser = commands.add_parser("loadtest", help="load-test an OpenAI-compatible server on this machine")
    parser.add_argument("url", help="the server's base URL, loopback only, e.g. http://127.0.0.1:8000")
    parser.add_argument("--label", default="server", help="names the result files, e.g. unpruned or compressed")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(defaults.concurrency), metavar="N",
                        help="concurrency levels (default: 1 2 4 8 16)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=defaults.requests_per_level, help="requests per level")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="seconds per level at most")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="max_tokens of every request")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINTS), default=defaults.endpoint)
    parser.add_argument("--no-stream", action="store_true", help="whole answers (no time to first token)")
    parser.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    parser.add_argument("--api-key-env", default=API_KEY_ENV, metavar="VAR",
                        help=f"environment variable holding the API key (default {API_KEY_ENV}; never printed)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"deployment folder; results go to OUT/data ({DEFAULT_OUT})")


def run(args: Any) -> int:
    """Run the load test of ``args``, save it under ``<out>/data`` and print its levels; 1 when nothing answered."""
    from pathlib import Path

    config = LoadTestConfig(concurrency=tuple(args.concurrency), requests_per_level=args.requests,
                            max_seconds=args.max_seconds, max_tokens=args.max_tokens, endpoint=args.endpoint,
                            stream=not args.no_stream, prompts=tuple(args.prompt or DEFAULT_PROMPTS),
                            api_key_env=args.api_key_env)  # fmt: skip
    check_label(args.label)
    check_loopback(args.url)
    result = run_load_test(args.url, config, label=args.label, progress=False)
    paths = result.save(Path(args.out) / "data")
    print(levels_table([result]).round(4).to_string(index=False))
    print(f"saved {', '.join(str(p) for p in paths)}")
    return 0 if any(level.ok for level in result.levels) else 1


__all__ = ["LoadTestConfig", "levels_table", "run_load_test"]
