"""Reliability of a server under load, loopback only and bounded in requests and seconds:

- :func:`run_soak`: steady load for a while at one concurrency; every request must be answered or shed with 429
  (none lost), and the server's resident memory must stay flat once warmed up;
- :func:`crash_and_restart`: ``kill -9`` the server mid-load; the load test must report the failures it saw (not
  raise), and the same command on the same port must serve again.

    python -m colab_helpers soak http://127.0.0.1:8000 --seconds 120 --concurrency 16
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_positive_integer, check_positive_number, field_help
from .loadresult import LoadTestResult
from .loadtest import LoadTestConfig, run_load_test


@dataclass
class SoakConfig:
    """Settings of :func:`run_soak`."""

    seconds: float = field(default=120.0, metadata=field_help("seconds of load (requests in flight then finish)"))
    concurrency: int = field(default=16, metadata=field_help(
        "requests in flight at once; pick the level where throughput stops growing (the saturating one)"))
    max_tokens: int = field(default=64, metadata=field_help("max_tokens of every request (ignore_eos: exactly that)"))
    max_requests: int = field(default=10_000, metadata=field_help("requests at most, whatever the time"))
    warmup: float = field(default=0.25, metadata=field_help(
        "share of the run before the memory baseline: the first batches grow the caches and allocator pools"))
    memory_tolerance: float = field(default=0.10, metadata=field_help(
        "largest drift of resident memory from its baseline, as a share, that still counts as flat"))
    monitor_interval: float = field(default=1.0, metadata=field_help("seconds between samples of /metrics"))

    def __post_init__(self) -> None:
        check_positive_number(self.seconds, "seconds", fix="e.g. seconds=120")
        check_positive_integer(self.concurrency, "concurrency", fix="e.g. concurrency=16")
        check_positive_integer(self.max_tokens, "max_tokens", fix="e.g. max_tokens=64")
        check_positive_integer(self.max_requests, "max_requests", fix="e.g. max_requests=10000")
        check_positive_number(self.monitor_interval, "monitor_interval", fix="e.g. monitor_interval=1.0")
        if not (isinstance(self.warmup, int | float) and 0 <= self.warmup < 1):
            raise ValueError(f"warmup must be a share in [0, 1), got {self.warmup!r}; e.g. warmup=0.25")
        if not (isinstance(self.memory_tolerance, int | float) and self.memory_tolerance > 0):
            raise ValueError(f"memory_tolerance must be a share > 0, got {self.memory_tolerance!r}; e.g. 0.10")

    def load_config(self) -> LoadTestConfig:
        return LoadTestConfig(concurrency=(self.concurrency,), requests_per_level=self.max_requests,
                              max_seconds=self.seconds, max_tokens=self.max_tokens,
                              monitor_interval=self.monitor_interval)  # fmt: skip


@dataclass(frozen=True)
class MemoryTrend:
    """Resident memory (MiB) over a run: the baseline (first sample after the warm-up), the end, the extremes after
    the baseline, and ``drift``: the largest distance from the baseline as a share of it (NaN without samples)."""

    baseline_mb: float
    end_mb: float
    min_mb: float
    max_mb: float
    samples: int

    @property
    def drift(self) -> float:
        if not self.samples or not self.baseline_mb > 0:
            return math.nan
        return max(abs(self.max_mb - self.baseline_mb), abs(self.min_mb - self.baseline_mb)) / self.baseline_mb

    @classmethod
    def of(cls, monitor: list[dict[str, Any]], warmup: float) -> MemoryTrend:
        """The trend of the ``resident_memory_mb`` column of ``monitor`` rows, after ``warmup`` of their span."""
        rows = [(float(r["t"]), float(r["resident_memory_mb"])) for r in monitor
                if math.isfinite(float(r.get("resident_memory_mb", math.nan)))]  # fmt: skip
        if not rows:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        start = rows[0][0] + warmup * (rows[-1][0] - rows[0][0])
        values = [mb for t, mb in rows if t >= start]
        return cls(values[0], values[-1], min(values), max(values), len(values))


@dataclass
class SoakResult:
    """A soak: its load test (one level), the memory trend and the verdicts."""

    config: SoakConfig
    load: LoadTestResult
    memory: MemoryTrend

    @property
    def level(self) -> Any:
        return self.load.levels[0]

    @property
    def lost(self) -> int:
        """Requests neither answered nor shed with 429."""
        return self.level.errors

    @property
    def memory_flat(self) -> bool:
        return self.memory.drift <= self.config.memory_tolerance  # NaN (no samples) is not flat

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.level.ok > 0 and self.memory_flat

    def summary(self) -> dict[str, Any]:
        """The figures as one flat dict (what the benchmark saves and the docs table shows)."""
        level = self.level
        return {"seconds": round(level.duration_s, 1), "concurrency": level.concurrency, "requests": level.requests,
                "ok": level.ok, "shed": level.shed, "lost": self.lost,
                "output_tokens_per_s": round(level.output_tokens_per_s, 2),
                "latency_p99": round(level.latency_p99, 3), "memory_baseline_mb": round(self.memory.baseline_mb, 1),
                "memory_end_mb": round(self.memory.end_mb, 1), "memory_max_mb": round(self.memory.max_mb, 1),
                "memory_drift": round(self.memory.drift, 4), "memory_samples": self.memory.samples,
                "memory_flat": self.memory_flat, "passed": self.passed}  # fmt: skip


def run_soak(url: str, config: SoakConfig | None = None, *, label: str = "soak", progress: bool = True) -> SoakResult:
    """Load the server at ``url`` (this machine only) at one concurrency for ``config.seconds``; return the result
    with the memory trend taken from the server's own ``/metrics`` (``process_resident_memory_bytes``)."""
    config = config or SoakConfig()
    with _seconds_bar(config.seconds, "soak" if label == "soak" else f"soak {label}", progress):
        load = run_load_test(url, config.load_config(), label=label, progress=False)
    return SoakResult(config=config, load=load, memory=MemoryTrend.of(load.monitor, config.warmup))


@contextlib.contextmanager
def _seconds_bar(seconds: float, desc: str, enabled: bool) -> Iterator[None]:
    """A tqdm bar of elapsed seconds, ticked by a daemon thread while the block runs (the load test's own bar counts
    requests, and a soak is bounded by time)."""
    stop = threading.Event()

    def tick() -> None:
        from tqdm.auto import tqdm

        with tqdm(total=round(seconds), desc=desc, bar_format="{l_bar}{bar}| {n}/{total} s") as bar:
            start = time.monotonic()
            while not stop.wait(1.0):
                bar.n = min(round(time.monotonic() - start), bar.total)
                bar.refresh()

    if enabled:
        threading.Thread(target=tick, daemon=True).start()
    try:
        yield
    finally:
        stop.set()


# -- kill -9 and restart -------------------------------------------------------------------------------------------


@dataclass
class CrashResult:
    """A crash drill: the load test the server died under (``during``), and one after the restart (``after``)."""

    during: LoadTestResult
    after: LoadTestResult
    killed_after_tokens: float
    restart_seconds: float

    @property
    def passed(self) -> bool:
        """The load test saw the crash (failures counted, no exception) and the restarted server answered all."""
        after = self.after.levels[0]
        return self.during.failures > 0 and after.errors == 0 and after.ok == after.requests > 0

    def summary(self) -> dict[str, Any]:
        during, after = self.during.levels[0], self.after.levels[0]
        return {"killed_after_tokens": self.killed_after_tokens, "during_ok": during.ok,
                "during_failures": during.errors, "during_shed": during.shed,
                "restart_seconds": round(self.restart_seconds, 1), "after_ok": after.ok,
                "after_failures": after.errors, "passed": self.passed}  # fmt: skip


def _completion_tokens(url: str) -> float:
    """Tokens the server has written so far (0 when ``/metrics`` cannot be read)."""
    import httpx

    from .monitor import PREFIX, parse_metrics

    try:
        text = httpx.get(url + "/metrics", timeout=2.0, trust_env=False).text
    except httpx.HTTPError:
        return 0.0
    return parse_metrics(text).get(f'{PREFIX}tokens_total{{kind="completion"}}', 0.0)


def crash_and_restart(model: str, *, concurrency: int = 4, requests: int = 32, max_tokens: int = 32,
                      kill_after_tokens: int = 64, timeout: float = 180.0, **options: Any) -> CrashResult:  # fmt: skip
    """Serve ``model`` (``start_server``, ``options`` as there), load it, ``kill -9`` it once it has written
    ``kill_after_tokens`` tokens, start it again on the same port and load it again. Bounded: ``requests`` per load
    test, ``timeout`` seconds per wait."""
    from .launch import free_port, start_server

    check_positive_integer(kill_after_tokens, "kill_after_tokens", fix="e.g. kill_after_tokens=64")
    load = LoadTestConfig(concurrency=(concurrency,), requests_per_level=requests, max_tokens=max_tokens,
                          max_seconds=timeout, request_timeout=timeout, monitor_interval=0)  # fmt: skip
    host = options.pop("host", "127.0.0.1")
    port = options.pop("port", None) or free_port(host)
    server = start_server(model, host=host, port=port, **options)
    try:
        server.wait_ready(timeout)
        box: dict[str, LoadTestResult] = {}
        url = server.url
        runner = threading.Thread(target=lambda: box.update(r=run_load_test(url, load, label="crash", progress=False)))
        runner.start()
        written = _wait_for_tokens(url, kill_after_tokens, timeout)
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(timeout)
        runner.join(timeout + 10)
        start = time.monotonic()
        server = start_server(model, host=host, port=port, **options)
        server.wait_ready(timeout)
        restart = time.monotonic() - start
        after = run_load_test(server.url, LoadTestConfig(concurrency=(concurrency,), requests_per_level=concurrency,
                                                         max_tokens=max_tokens, monitor_interval=0),
                              label="restarted", progress=False)  # fmt: skip
    finally:
        server.stop()
    if "r" not in box:
        raise RuntimeError("the load test under the crash did not finish; see the server log " + str(server.log_path))
    return CrashResult(during=box["r"], after=after, killed_after_tokens=written, restart_seconds=restart)


def _wait_for_tokens(url: str, tokens: int, timeout: float) -> float:
    """Poll the server's token counter until it reaches ``tokens``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = _completion_tokens(url)
        if written >= tokens:
            return written
        time.sleep(0.05)  # polling interval: a decode step of the toy model takes a few milliseconds
    raise TimeoutError(f"the server at {url} wrote fewer than {tokens} tokens in {timeout} s")


# -- command line --------------------------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """``python -m colab_helpers soak URL --seconds S --concurrency N``."""
    defaults = SoakConfig()
    parser = commands.add_parser("soak", help="hold a server on this machine under load; check nothing is lost and "
                                              "its memory stays flat")  # fmt: skip
    parser.add_argument("url", help="the server's base URL, loopback only, e.g. http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="requests in flight at once")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="max_tokens of every request")
    parser.add_argument("--memory-tolerance", type=float, default=defaults.memory_tolerance,
                        help="largest resident-memory drift that counts as flat (share of the baseline)")  # fmt: skip
    parser.add_argument("--label", default="soak", help="names the result files")
    parser.add_argument("--out", default="results/deployment", help="deployment folder; results go to OUT/data")


def run(args: Any) -> int:
    """Run the soak of ``args``, save its load test under ``<out>/data``, print the verdict; 1 when it failed."""
    import json
    from pathlib import Path

    from .loadresult import check_label
    from .loopback import check_loopback

    config = SoakConfig(seconds=args.seconds, concurrency=args.concurrency, max_tokens=args.max_tokens,
                        memory_tolerance=args.memory_tolerance)  # fmt: skip
    check_label(args.label)
    check_loopback(args.url)
    result = run_soak(args.url, config, label=args.label, progress=False)
    result.load.save(Path(args.out) / "data")
    print(json.dumps(result.summary(), indent=1))
    return 0 if result.passed else 1


__all__ = ["CrashResult", "MemoryTrend", "SoakConfig", "SoakResult", "crash_and_restart", "run_soak"]
