"""Reliability of our server on SmolLM2-135M-Instruct compressed to 75%: the deployment issue's reliability goals.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/reliability.py     # about 4 minutes
    python benchmarks/reliability.py --quick                          # embedded-llama, seconds (tests)

The compressed model is the serving benchmark's (results/deployment/models/keep75, made there when missing),
served by ``colab_helpers.deploy.start_server`` on loopback with its defaults. Checks (each a goal, in brackets):

- **Soak** (``run_soak``): 120 s at concurrency 16, past the batch cap of 8, where tokens/s stop growing [nothing
  lost: every request answered or shed with 429; resident memory within 10% of its value after the first quarter].
- **Malformed requests**: 30 (10 kinds, 3 times each: bad JSON, invalid UTF-8, wrong types, ``max_tokens`` out of
  range, a prompt longer than the context ...) [30 answers 4xx; ``/health`` 200 and a completion after them].
- **kill -9 mid-load** (``crash_and_restart``) [the load test reports the failures it saw; the restarted server
  answers every request].

Writes the "Reliability" section of docs/deployment-results.md (not with ``--quick``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # loaded by file path: find the shared harness beside it
from _timing import check, checks_markdown, command_line, write_marked_section  # noqa: E402
from serving import FULL as SERVING  # noqa: E402
from serving import QUICK as SERVING_QUICK  # noqa: E402
from serving import serving_models  # noqa: E402

DOC = ROOT / "docs" / "deployment-results.md"
OUT = ROOT / "results" / "deployment"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
COMMAND = ".venv/bin/python benchmarks/reliability.py"
FULL = dict(soak_seconds=120.0, soak_concurrency=16, max_tokens=64, crash_concurrency=8, crash_requests=48,
            kill_after_tokens=256, context_words=9000, ready=900.0)  # fmt: skip
QUICK = dict(soak_seconds=3.0, soak_concurrency=4, max_tokens=8, crash_concurrency=4, crash_requests=32,
             kill_after_tokens=16, context_words=400, ready=300.0)  # fmt: skip


def malformed_requests(context_words: int) -> list[tuple[str, bytes]]:
    """Ten kinds of bad request (endpoint, raw body), each three times: 30 in all."""
    kinds: list[tuple[str, Any]] = [
        ("completions", b"{not json"), ("completions", b'{"prompt": "\xff\xfe"}'), ("completions", {}),
        ("completions", {"prompt": 5}), ("completions", {"prompt": "a", "max_tokens": 0}),
        ("completions", {"prompt": "a", "max_tokens": 10**6}), ("completions", {"prompt": "a", "temperature": "hot"}),
        ("completions", {"prompt": "word " * context_words}), ("chat/completions", {"messages": []}),
        ("chat/completions", {"messages": [{"role": "user", "content": 3}]}),
    ]  # fmt: skip
    raw = [(endpoint, body if isinstance(body, bytes) else json.dumps(body).encode()) for endpoint, body in kinds]
    return raw * 3


def _malformed(url: str, context_words: int) -> dict[str, Any]:
    import httpx

    statuses = []
    with httpx.Client(timeout=60.0, trust_env=False) as client:
        for endpoint, body in malformed_requests(context_words):
            reply = client.post(f"{url}/v1/{endpoint}", content=body, headers={"content-type": "application/json"})
            statuses.append(reply.status_code)
        health = client.get(url + "/health").status_code
        served = client.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}).status_code
    return {"sent": len(statuses), "4xx": sum(400 <= s < 500 for s in statuses), "statuses": sorted(set(statuses)),
            "health_after": health, "completion_after": served}  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    """Run the three drills; return ``{"name", "checks", "figures", "settings"}`` (doc: full runs only)."""
    from colab_helpers.deploy import SoakConfig, crash_and_restart, run_soak, start_server

    size = QUICK if quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="reliability-bench-")) if quick else OUT
    _, compressed = serving_models(SERVING_QUICK if quick else SERVING, scratch / "models")
    soak_config = SoakConfig(seconds=size["soak_seconds"], concurrency=size["soak_concurrency"],
                             max_tokens=size["max_tokens"], monitor_interval=0.25 if quick else 1.0)  # fmt: skip
    with start_server(str(compressed)) as server:
        server.wait_ready(size["ready"])
        soak = run_soak(server.url, soak_config, label="soak", progress=not quick)
        malformed = _malformed(server.url, size["context_words"])
    crash = crash_and_restart(str(compressed), concurrency=size["crash_concurrency"], requests=size["crash_requests"],
                              max_tokens=size["max_tokens"], kill_after_tokens=size["kill_after_tokens"],
                              timeout=size["ready"])  # fmt: skip
    soak.load.save(scratch / "data")
    figures = {"soak": soak.summary(), "malformed": malformed, "crash": crash.summary()}
    checks = _checks(soak, malformed, crash)
    settings = {**size, "model": str(compressed.relative_to(ROOT)) if not quick else "embedded-llama (75%)"}
    result = {"name": "reliability", "checks": checks, "figures": figures, "settings": settings}
    if not quick:
        write_doc(result)
    return result


def _checks(soak: Any, malformed: dict[str, Any], crash: Any) -> list[dict[str, Any]]:
    s, c = soak.summary(), crash.summary()
    return [
        check(f"soak {s['seconds']} s at concurrency {s['concurrency']}: requests lost (neither answered nor 429)",
              "0", s["lost"], s["lost"] == 0 and s["ok"] > 0,
              f"{s['requests']} sent: {s['ok']} answered, {s['shed']} shed; {s['output_tokens_per_s']} tokens/s"),
        check("soak: resident memory drift from its value after the warm-up", "<= 10%", s["memory_drift"],
              soak.memory_flat, f"{s['memory_baseline_mb']} MiB -> max {s['memory_max_mb']}, end "
              f"{s['memory_end_mb']} ({s['memory_samples']} samples)"),
        check("malformed requests answered 4xx", f"{malformed['sent']} of {malformed['sent']}", malformed["4xx"],
              malformed["4xx"] == malformed["sent"] and malformed["health_after"] == 200
              and malformed["completion_after"] == 200,
              f"statuses {malformed['statuses']}; then /health {malformed['health_after']}, a completion "
              f"{malformed['completion_after']}"),
        check("kill -9 mid-load: failures the load test reported", "> 0", c["during_failures"],
              c["during_failures"] > 0, f"{c['during_ok']} answered before the kill (after "
              f"{c['killed_after_tokens']:.0f} tokens)"),
        check("kill -9: the restarted server answers every request", "all", c["after_ok"], crash.passed,
              f"ready again in {c['restart_seconds']} s; {c['after_failures']} failures after"),
    ]  # fmt: skip


def write_doc(result: dict[str, Any]) -> Path:
    """Write the "Reliability" section of docs/deployment-results.md between its markers (others untouched)."""
    from dataclasses import fields

    from colab_helpers.deploy import ServeConfig

    settings, defaults = result["settings"], {f.name: f.default for f in fields(ServeConfig)}
    lines = checks_markdown(result["checks"])
    section = "\n".join([
        START, "## Reliability", "",
        f"Written by `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {COMMAND}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPU "
        f"cores. Our server (defaults: batch "
        f"{defaults['max_batch_size']}, queue {defaults['max_queue']}) on {settings['model']} (SmolLM2-135M-Instruct "
        f"compressed to 75%), loopback; every request asks "
        f"{settings['max_tokens']} tokens. The soak's load test: results/deployment/data/soak.json.", "",
        *lines, "",
        "Not shown: hours-long soaks, memory under prompts near the context length, crashes of the machine "
        "rather than the process.", END,
    ])  # fmt: skip
    return write_marked_section(DOC, START, END, section, "Deployment results")


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
