"""The load test, the metrics monitor and the deployment report, against a small fake OpenAI-style server (FastAPI
on a free loopback port in a thread: fixed tokens, every third request shed with 429, Prometheus metrics).

No timing is asserted: only counts, shapes, files, and that failures are counted rather than raised.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from fastapi import Request  # noqa: E402  (module level: the fake app's annotations are strings)

from colab_helpers.deploy import LoadTestConfig, LoadTestResult, load_results, run_load_test  # noqa: E402
from colab_helpers.deploy.cli import main  # noqa: E402
from colab_helpers.deploy.loadresult import LevelSummary, RequestRecord, percentile  # noqa: E402
from colab_helpers.deploy.loopback import check_loopback  # noqa: E402
from colab_helpers.deploy.monitor import MetricsSampler, metrics_row, parse_metrics  # noqa: E402
from colab_helpers.deploy.report import write_deployment_report  # noqa: E402

TOKENS = ["Once", " upon", " a", " time", " there", " was"]
SECRET = "sk-FAKEloadtestKEY1234567890"


def _fake_app(state: dict):  # noqa: ANN202 - a FastAPI app
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter("colab_helpers_requests_total", "requests", ["endpoint", "status"], registry=registry)
    tokens = Counter("colab_helpers_tokens_total", "tokens", ["kind"], registry=registry)
    Gauge("colab_helpers_queue_depth", "queue", registry=registry).set(2)
    Gauge("colab_helpers_active_sequences", "active", registry=registry).set(3)
    batch = Histogram("colab_helpers_batch_size", "batch", buckets=(1, 2, 4, 8, 16), registry=registry)
    Counter("colab_helpers_shed_total", "shed", registry=registry)
    Gauge("process_resident_memory_bytes", "rss", registry=registry).set(200 * 2**20)
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode())

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def complete(request: Request):  # noqa: ANN202
        body = await request.json()
        state["auth"].append(request.headers.get("authorization", ""))
        state["count"] += 1
        number = state["count"]
        if number % 3 == 0:
            requests.labels("completions", "429").inc()
            return JSONResponse({"error": {"message": "queue full"}}, status_code=429, headers={"Retry-After": "1"})
        words = TOKENS[: body["max_tokens"]]
        requests.labels("completions", "200").inc()
        tokens.labels("completion").inc(len(words))
        batch.observe(2)
        chat = "messages" in body
        if not body.get("stream"):
            text = "".join(words)
            choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            return {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": len(words)}}

        async def events():  # noqa: ANN202
            for i, word in enumerate(words):
                if state.get("abort_after") is not None and number > state["abort_after"] and i == 2:
                    raise RuntimeError("server died mid-stream")  # uvicorn drops the connection
                chunk = {"choices": [{"delta": {"content": word}} if chat else {"text": word, "index": 0}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0)
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': len(words)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, dict]]:
    import uvicorn

    state: dict = {"count": 0, "auth": [], "abort_after": None}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_fake_app(state), log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{port}", state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.5:8000", "ftp://127.0.0.1", "127.0.0.1:80", 8000])
def test_loopback_only(url: object) -> None:
    with pytest.raises(ValueError, match="127.0.0.1"):
        check_loopback(url)


def test_loopback_urls_are_normalised() -> None:
    assert check_loopback("http://localhost:8000/v1/") == "http://localhost:8000"
    assert check_loopback("http://[::1]:9/") == "http://[::1]:9"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("concurrency", (), "at least one"), ("concurrency", (1, 0), "concurrency level"),
     ("requests_per_level", 0, "requests_per_level"), ("max_seconds", float("nan"), "max_seconds"),
     ("endpoint", "embeddings", "endpoint"), ("prompts", ("",), "prompts"), ("monitor_interval", -1, "monitor")],
)  # fmt: skip
def test_config_validates_before_work(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadTestConfig(**{field: value})


def test_percentile_interpolates_and_ignores_nan() -> None:
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert math.isnan(percentile([float("nan")], 50))


def test_level_summary_counts_and_throughput() -> None:
    records = [RequestRecord(1, 0, "ok", 200, 0.0, 1.0, 0.1, 4, [0.2, 0.2, 0.2]),
               RequestRecord(1, 1, "shed", 429), RequestRecord(1, 2, "error", error="ConnectError")]  # fmt: skip
    level = LevelSummary.of(1, records, duration_s=2.0)
    assert (level.requests, level.ok, level.shed, level.errors, level.output_tokens) == (3, 1, 1, 1, 4)
    assert level.output_tokens_per_s == 2.0 and level.itl_p50 == pytest.approx(0.2)


def test_streaming_load_test_counts_tokens_and_sheds(fake_server, tmp_path: Path, monkeypatch) -> None:
    url, state = fake_server
    monkeypatch.setenv("COLAB_HELPERS_API_KEY", SECRET)
    config = LoadTestConfig(concurrency=(1, 3), requests_per_level=6, max_seconds=30, max_tokens=4,
                            monitor_interval=0.05)  # fmt: skip
    result = run_load_test(url, config, label="fake", progress=False)
    assert [level.concurrency for level in result.levels] == [1, 3]
    assert sum(level.requests for level in result.levels) == 12
    assert sum(level.shed for level in result.levels) == 4 and result.failures == 0
    done = [r for r in result.requests if r.status == "ok"]
    assert all(r.output_tokens == 4 and len(r.token_gaps) == 3 and r.ttft <= r.latency for r in done)
    assert f"Bearer {SECRET}" in state["auth"]
    assert result.monitor and result.monitor[0]["queue_depth"] == 2 and result.monitor[0]["resident_memory_mb"] == 200
    paths = result.save(tmp_path / "data")
    assert sorted(p.name for p in paths) == ["fake.json", "fake_levels.csv", "fake_monitor.csv", "fake_requests.csv"]
    assert not any(SECRET in p.read_text() for p in paths), "the API key must never be saved"
    again = load_results(tmp_path)["fake"]
    assert again.levels[0].ok == result.levels[0].ok and len(again.requests) == 12


def test_chat_without_streaming(fake_server) -> None:
    url, _ = fake_server
    config = LoadTestConfig(concurrency=(2,), requests_per_level=2, max_tokens=5, endpoint="chat", stream=False,
                            monitor_interval=0)  # fmt: skip
    result = run_load_test(url + "/v1", config, label="chat", progress=False)
    assert sum(r.output_tokens for r in result.requests if r.status == "ok") == 5 * result.levels[0].ok
    assert result.monitor == []


def test_a_server_that_dies_mid_stream_gives_counted_failures(fake_server) -> None:
    url, state = fake_server
    state["abort_after"] = state["count"] + 2  # the first two answer, the rest break mid-stream
    try:
        config = LoadTestConfig(concurrency=(1,), requests_per_level=6, max_tokens=6, monitor_interval=0)
        result = run_load_test(url, config, label="dying", progress=False)
    finally:
        state["abort_after"] = None
    statuses = [r.status for r in result.requests]
    assert statuses.count("error") >= 2 and "ok" in statuses
    assert all(r.error for r in result.requests if r.status == "error")


def test_no_server_at_all_is_failures_not_a_crash() -> None:
    config = LoadTestConfig(concurrency=(1, 2), requests_per_level=2, max_tokens=2, monitor_interval=0.05)
    result = run_load_test(f"http://127.0.0.1:{_free_port()}", config, label="gone", progress=False)
    assert result.failures == 4 and all("Connect" in r.error for r in result.requests)
    assert result.monitor == []


def test_runs_inside_a_running_event_loop(fake_server) -> None:
    """A notebook kernel runs an event loop: the load test then runs its own in a thread."""
    url, _ = fake_server
    config = LoadTestConfig(concurrency=(1,), requests_per_level=1, max_tokens=2, monitor_interval=0)

    async def inside() -> LoadTestResult:
        return run_load_test(url, config, label="nested", progress=False)

    assert asyncio.run(inside()).levels[0].requests == 1


def test_parse_metrics_reads_the_contract_names() -> None:
    text = "\n".join([
        "# TYPE colab_helpers_queue_depth gauge", "colab_helpers_queue_depth 5",
        "# TYPE colab_helpers_tokens_total counter",
        'colab_helpers_tokens_total{kind="completion"} 40', 'colab_helpers_tokens_total{kind="prompt"} 10',
        "# TYPE colab_helpers_batch_size histogram", 'colab_helpers_batch_size_bucket{le="+Inf"} 4',
        "colab_helpers_batch_size_count 4", "colab_helpers_batch_size_sum 12", "",
    ])  # fmt: skip
    flat = parse_metrics(text)
    assert flat["colab_helpers_queue_depth"] == 5 and flat["colab_helpers_tokens_total"] == 50
    row = metrics_row(flat, {"colab_helpers_batch_size_count": 2, "colab_helpers_batch_size_sum": 2}, 1.0)
    assert row["completion_tokens"] == 40 and row["batch_size"] == 5.0 and math.isnan(row["active_sequences"])


def test_sampler_refuses_other_hosts_and_survives_a_dead_server() -> None:
    with pytest.raises(ValueError, match="this machine"):
        MetricsSampler("http://192.168.1.2:8000")
    with MetricsSampler(f"http://127.0.0.1:{_free_port()}", interval=0.01) as sampler:
        threading.Event().wait(0.05)
    assert sampler.samples == [] and sampler.failed_polls >= 1


def test_cli_loadtest_then_report(fake_server, tmp_path: Path, capsys) -> None:
    url, _ = fake_server
    for label in ("unpruned", "compressed"):
        status = main(["loadtest", url, "--label", label, "--concurrency", "1", "2", "--requests", "3",
                       "--max-seconds", "20", "--max-tokens", "3", "--out", str(tmp_path)])  # fmt: skip
        assert status == 0
    assert "output_tokens_per_s" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 0
    report = tmp_path / "reports" / "deployment.html"
    page = report.read_text()
    assert "Against unpruned at the same concurrency" in page and page.count("data:image/png;base64,") == 2
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"serving.png", "monitoring.png"}


def test_cli_refuses_a_remote_url(capsys) -> None:
    assert main(["loadtest", "http://example.com", "--requests", "1"]) == 2
    assert "this machine" in capsys.readouterr().err


def test_report_needs_results(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="loadtest"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        write_deployment_report({}, tmp_path)


def test_end_to_end_against_the_real_server_at_toy_size(tmp_path: Path) -> None:
    """The real server (``start_server``) on the embedded toy model: streamed tokens counted, metrics sampled."""
    from colab_helpers.deploy import start_server

    config = LoadTestConfig(concurrency=(1, 2), requests_per_level=3, max_tokens=4, monitor_interval=0.1)
    with start_server("embedded-llama") as server:
        server.wait_ready(timeout=120)
        result = run_load_test(server.url, config, label="toy", progress=False)
    assert result.failures == 0 and sum(level.ok for level in result.levels) >= 1
    assert all(r.output_tokens >= 1 for r in result.requests if r.status == "ok")
    assert result.monitor and any(row["resident_memory_mb"] > 0 for row in result.monitor)
    assert write_deployment_report([result], tmp_path).is_file()
