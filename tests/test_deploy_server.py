"""The OpenAI-compatible server: shapes, streaming, batching equal to one-at-a-time greedy decoding (per-layer head
counts too), the bounded queue, validation, auth, metrics, health, the background launcher and the CLI's refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from colab_helpers import load_model, remove_heads, save_pruned  # noqa: E402
from colab_helpers.deploy.cli import main  # noqa: E402
from colab_helpers.deploy.engine import Engine, Event, QueueFullError, SamplingParams  # noqa: E402
from colab_helpers.deploy.launch import start_server  # noqa: E402
from colab_helpers.deploy.serve_cli import load_for_serving  # noqa: E402
from colab_helpers.deploy.server import ServeConfig, create_app, is_loopback  # noqa: E402

PROMPTS = ["Hello", "The quick brown fox jumps over", "Small language models run on a laptop. Pruning", "a b"]
KEY = "test-key-123456"


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return load_model("embedded-llama", device="cpu")


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """embedded-llama with different head counts per layer (a whole KV group gone in two layers), saved."""
    model, tokenizer = load_model("embedded-llama", device="cpu")
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, :4] = mask[2, 4:] = True
    remove_heads(model, mask)
    assert [layer.self_attn.k_proj.weight.shape[0] for layer in model.model.layers] == [16, 32, 16, 32]
    return save_pruned(model, tokenizer, tmp_path_factory.mktemp("pruned") / "model")


@pytest.fixture
def client(toy: tuple[Any, Any]) -> Iterator[TestClient]:
    yield from _client(Engine(*toy, max_batch_size=4, max_queue=4), ServeConfig(model="embedded-llama"))


def _client(engine: Any, config: ServeConfig) -> Iterator[TestClient]:
    with TestClient(create_app(engine, config)) as test_client:
        yield test_client


def _reference(model: Any, tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    """Greedy tokens of ``generate`` for one prompt alone, up to and without the end-of-text token."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    tokens = out[0, ids.shape[1]:].tolist()
    return tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens


def _events(response: Any) -> list[Any]:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


# -- shapes -------------------------------------------------------------------------------------------------------


def test_completion_has_openai_shape_and_counts_its_tokens(client: TestClient, toy: tuple[Any, Any]) -> None:
    reply = client.post("/v1/completions", json={"model": "anything", "prompt": PROMPTS[1], "max_tokens": 12,
                                                 "temperature": 0})  # fmt: skip
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "embedded-llama"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    expected = _reference(*toy, PROMPTS[1], 12)
    assert choice["text"] == toy[1].decode(expected, skip_special_tokens=True)
    assert choice["finish_reason"] == ("length" if len(expected) == 12 else "stop")
    prompt_tokens, completion_tokens = len(toy[1](PROMPTS[1]).input_ids), min(len(expected) + 1, 12)  # + end-of-text
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def test_chat_completion_uses_messages_and_answers_as_assistant(client: TestClient) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 5, "temperature": 0}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 5
    assert client.get("/v1/models").json()["data"][0]["id"] == "embedded-llama"


def test_streaming_sends_the_same_text_in_chunks_then_done(client: TestClient) -> None:
    request = {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/completions", json=request).json()
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = _events(reply)
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == whole["choices"][0]["finish_reason"]
    assert events[-1]["usage"] == whole["usage"] and all(e["id"] == events[0]["id"] for e in events)
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=chat) as reply:
        events = _events(reply)
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_strings_seeds_and_max_tokens(client: TestClient) -> None:
    free = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 12, "temperature": 0}).json()
    text = free["choices"][0]["text"]
    assert len(text) > 3
    stop = text[2:4]
    cut = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 12, "temperature": 0, "stop": stop})
    assert cut.json()["choices"][0] == {**free["choices"][0], "text": text[: text.find(stop)], "finish_reason": "stop"}
    sampled = [client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 1.0,
                                                     "top_p": 0.9, "seed": 7}).json()  # fmt: skip
               for _ in range(2)]
    assert sampled[0]["choices"][0]["text"] == sampled[1]["choices"][0]["text"]
    assert client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 1}).json()["usage"]["completion_tokens"] == 1
    fixed = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 30, "ignore_eos": True}).json()
    assert fixed["usage"]["completion_tokens"] == 30 and fixed["choices"][0]["finish_reason"] == "length"


# -- batching -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["embedded-llama", "embedded-gpt2", "pruned"])
def test_requests_decoded_together_equal_greedy_one_at_a_time(source: str, pruned_dir: Path) -> None:
    """Three start together and finish at different steps (their own max_tokens); the fourth joins the running
    batch then."""
    model, tokenizer = load_for_serving(str(pruned_dir) if source == "pruned" else source, device="cpu")
    engine = Engine(model, tokenizer, max_batch_size=3, max_queue=8)
    sizes: list[int] = []
    engine.add_step_listener(sizes.append)
    engine.pause()  # every request is queued before the first step: they join the batch together
    engine.start()
    results: dict[int, Any] = {}
    tokens = [6, 9, 70, 10]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, engine.generate(tokenizer(PROMPTS[i]).input_ids, SamplingParams(max_tokens=tokens[i]), timeout=120)))
        for i in range(len(PROMPTS))]  # fmt: skip
    for thread in threads:
        thread.start()
    while engine.queue_depth < len(PROMPTS):
        threading.Event().wait(0.01)  # polling for the queue to fill, not a timing assertion
    engine.resume()
    for thread in threads:
        thread.join()
    engine.stop()
    for i, prompt in enumerate(PROMPTS):
        assert list(results[i].token_ids) == _reference(model, tokenizer, prompt, tokens[i]), prompt
    assert max(sizes) == 3  # three decoded at once, the fourth joined when one left


def test_queue_full_answers_429_with_retry_after(toy: tuple[Any, Any]) -> None:
    engine = Engine(*toy, max_batch_size=1, max_queue=2)
    for test_client in _client(engine, ServeConfig(model="embedded-llama")):
        engine.pause()
        held: list[Event] = []
        for _ in range(2):
            engine.submit([5, 6], SamplingParams(max_tokens=2), held.append)
        with pytest.raises(QueueFullError):
            engine.submit([5, 6], SamplingParams(max_tokens=2), lambda e: None)
        reply = test_client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
        assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
        assert "busy" in reply.json()["error"]["message"]
        metrics = test_client.get("/metrics").text
        assert "colab_helpers_shed_total 1.0" in metrics and "colab_helpers_queue_depth 2.0" in metrics
        engine.resume()
        while engine.queue_depth >= 2:
            threading.Event().wait(0.01)  # the engine thread takes a queued request; polling, not a timing assertion
        assert test_client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 200
        assert sum(e.finish_reason is not None for e in held) == 2  # the queued ones went first


# -- validation, auth, health, metrics ----------------------------------------------------------------------------

LONG = "word " * 400  # more tokens than embedded-llama's 256 positions
MALFORMED: list[tuple[str, Any, str]] = [
    ("completions", b"{not json", "body"), ("completions", b'{"prompt": "\xff\xfe"}', "body"),
    ("completions", b"[1, 2]", "body"), ("completions", b"", "body"), ("completions", {}, "prompt"),
    ("completions", {"prompt": 5}, "prompt"), ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": []}, "prompt"), ("completions", {"prompt": [1, -2]}, "prompt"),
    ("completions", {"prompt": [10**9]}, "prompt"), ("completions", {"prompt": LONG}, "prompt"),
    ("completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 100000}, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": "5"}, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 2.5}, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": True}, "max_tokens"),
    ("completions", {"prompt": "a", "temperature": -1}, "temperature"),
    ("completions", {"prompt": "a", "temperature": 3}, "temperature"),
    ("completions", {"prompt": "a", "temperature": "hot"}, "temperature"),
    ("completions", {"prompt": "a", "top_p": 1.5}, "top_p"), ("completions", {"prompt": "a", "top_p": 0}, "top_p"),
    ("completions", {"prompt": "a", "stream": "yes"}, "stream"), ("completions", {"prompt": "a", "stop": 5}, "stop"),
    ("completions", {"prompt": "a", "stop": list("abcde")}, "stop"), ("completions", {"prompt": "a", "n": 2}, "n"),
    ("completions", {"prompt": "a", "seed": -1}, "seed"), ("chat/completions", {"prompt": "a"}, "messages"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "bob", "content": "x"}]}, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
]  # fmt: skip


def test_thirty_malformed_requests_get_4xx_naming_the_field_and_the_server_stays_up(client: TestClient) -> None:
    assert len(MALFORMED) == 30
    for endpoint, body, field in MALFORMED:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = client.post(f"/v1/{endpoint}", content=raw, headers={"content-type": "application/json"})
        assert 400 <= reply.status_code < 500, (body, reply.status_code)
        error = reply.json()["error"]
        assert error["param"] == field and field.split("[")[0] in error["message"], (body, error)
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 200
    assert 'colab_helpers_requests_total{endpoint="/v1/completions",status="400"}' in client.get("/metrics").text


def test_a_body_over_the_limit_is_413(toy: tuple[Any, Any]) -> None:
    for test_client in _client(Engine(*toy), ServeConfig(model="embedded-llama", max_body_bytes=100)):
        assert test_client.post("/v1/completions", json={"prompt": "x" * 200}).status_code == 413


def test_api_key_is_required_on_the_api_when_set(toy: tuple[Any, Any]) -> None:
    for test_client in _client(Engine(*toy), ServeConfig(model="embedded-llama", api_key=KEY)):
        request = {"prompt": "Hello", "max_tokens": 2}
        assert test_client.post("/v1/completions", json=request).status_code == 401
        wrong = {"Authorization": "Bearer nope-nope-nope"}
        assert test_client.post("/v1/completions", json=request, headers=wrong).status_code == 401
        assert test_client.get("/v1/models", headers={"Authorization": KEY}).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert test_client.post("/v1/completions", json=request, headers=good).status_code == 200
        assert test_client.get("/health").status_code == 200  # readiness probes need no key
        assert KEY not in test_client.get("/metrics").text
    assert KEY not in repr(ServeConfig(model="embedded-llama", api_key=KEY))


def test_metrics_are_prometheus_text_with_the_agreed_names(client: TestClient) -> None:
    client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "temperature": 0})
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    for name in ('colab_helpers_requests_total{endpoint="/v1/completions",status="200"} 1.0',
                 'colab_helpers_tokens_total{kind="prompt"}', 'colab_helpers_tokens_total{kind="completion"}',
                 "colab_helpers_queue_depth", "colab_helpers_active_sequences", "colab_helpers_batch_size_bucket",
                 "colab_helpers_request_latency_seconds_bucket", "colab_helpers_time_to_first_token_seconds_count 1.0",
                 "colab_helpers_shed_total", "process_resident_memory_bytes"):  # fmt: skip
        assert name in reply.text, name


def test_health_is_503_while_loading_then_200(toy: tuple[Any, Any]) -> None:
    release = threading.Event()

    def build() -> Engine:
        release.wait(60)
        return Engine(*toy)

    with TestClient(create_app(build, ServeConfig(model="embedded-llama"))) as test_client:
        assert test_client.get("/health").json() == {"status": "loading"}
        assert test_client.post("/v1/completions", json={"prompt": "Hi"}).status_code == 503
        release.set()
        while test_client.get("/health").status_code != 200:
            threading.Event().wait(0.01)  # polling for the loader thread
        assert test_client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_shutting_down_turns_new_requests_away_with_503(client: TestClient) -> None:
    client.app.state.serving.draining = True  # what SIGTERM / SIGINT set in `serve`
    assert client.get("/health").json() == {"status": "shutting down"}
    reply = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    assert reply.status_code == 503 and "shutting down" in reply.json()["error"]["message"]


def test_a_cancelled_request_leaves_the_batch_and_gets_nothing_more(toy: tuple[Any, Any]) -> None:
    engine = Engine(*toy, max_batch_size=2)
    gone: list[Event] = []
    engine.pause()
    engine.start()
    ticket = engine.submit(toy[1]("Hello").input_ids, SamplingParams(max_tokens=50, ignore_eos=True), gone.append)
    ticket.cancel()  # what the server does when a client goes away
    engine.resume()
    kept = engine.generate(toy[1]("a b").input_ids, SamplingParams(max_tokens=5, ignore_eos=True), timeout=60)
    engine.stop()
    assert kept.completion_tokens == 5 and gone == [] and engine.active_sequences == 0


def test_stopping_the_engine_finishes_requests_in_flight(toy: tuple[Any, Any]) -> None:
    engine = Engine(*toy, max_batch_size=2)
    events: list[Event] = []
    engine.pause()
    engine.start()
    engine.submit(toy[1]("Hello").input_ids, SamplingParams(max_tokens=6), events.append)
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    while engine.accepting:
        threading.Event().wait(0.01)
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit([5], SamplingParams(), events.append)
    stopper.join()  # stop() resumed the engine and drained the queue
    assert events[-1].finish_reason in ("stop", "length") and events[-1].completion_tokens >= 1


# -- configuration, CLI, launcher ---------------------------------------------------------------------------------


def test_config_refuses_a_public_host_without_a_key_and_bad_values(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(ValueError, match="not a loopback address.*API key"):
        ServeConfig(model="embedded-llama", host="0.0.0.0")
    assert ServeConfig(model="embedded-llama", host="0.0.0.0", api_key=KEY).host == "0.0.0.0"
    for bad in ({"port": 70000}, {"max_batch_size": 0}, {"max_tokens": "8"}, {"dtype": "fp8"}, {"api_key": "short"}):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[-1]):
            ServeConfig(model="embedded-llama", **bad)
    with pytest.raises(ValueError, match="nothing is there"):
        start_server("./no/such/model")
    monkeypatch.delenv("COLAB_HELPERS_API_KEY", raising=False)
    assert main(["serve", "embedded-llama", "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_start_server_serves_a_pruned_folder_in_a_subprocess_and_stops_gracefully(pruned_dir: Path) -> None:
    import httpx

    with start_server(str(pruned_dir), device="cpu", max_batch_size=2, api_key=KEY) as server:
        assert KEY not in repr(server) and server.url.startswith("http://127.0.0.1:")
        server.wait_ready(timeout=120)
        request = {"prompt": "Hello", "max_tokens": 6, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=request, headers=server.headers,
                          timeout=60, trust_env=False) as reply:  # fmt: skip
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")
            server.process.terminate()  # SIGTERM mid-answer: the answer still ends properly
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert server.stop(timeout=60) in (0, -15)
    assert not server.running and "shutting down" in server.log_tail(50).lower()
    assert KEY not in server.log_path.read_text(encoding="utf-8")


def test_serves_an_exported_folder_with_its_own_modeling_code(pruned_dir: Path, tmp_path: Path) -> None:
    """The HF export (modeling code in the folder, ``auto_map``) loads with trust_remote_code and answers alike."""
    try:
        from colab_helpers.deploy.export import export_model
    except ImportError:
        pytest.skip("the export is not there yet")
    export_model(str(pruned_dir), tmp_path / "hf", format="hf")
    exported, reference = load_for_serving(str(tmp_path / "hf"), device="cpu"), load_for_serving(str(pruned_dir))
    assert "auto_map" in json.loads((tmp_path / "hf" / "config.json").read_text(encoding="utf-8"))
    engines = [Engine(*exported).start(), Engine(*reference).start()]
    ids = reference[1](PROMPTS[1]).input_ids
    answers = [engine.generate(ids, SamplingParams(max_tokens=8), timeout=60).token_ids for engine in engines]
    assert answers[0] == answers[1]
    for engine in engines:
        engine.stop()
