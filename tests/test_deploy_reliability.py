"""Reliability under load at toy size (real server subprocesses, loopback, bounded): a soak loses nothing and keeps
memory flat; kill -9 mid-load is reported as failures and the restarted server serves again; the verdicts' logic
on made-up series."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")

from colab_helpers.deploy.cli import main  # noqa: E402
from colab_helpers.deploy.launch import start_server  # noqa: E402
from colab_helpers.deploy.loadresult import LevelSummary, LoadTestResult, RequestRecord  # noqa: E402
from colab_helpers.deploy.reliability import (  # noqa: E402
    MemoryTrend,
    SoakConfig,
    SoakResult,
    crash_and_restart,
    run_soak,
)


def _rows(values: list[float]) -> list[dict[str, float]]:
    return [{"t": float(i), "resident_memory_mb": mb} for i, mb in enumerate(values)]


def test_memory_trend_starts_after_the_warmup_and_measures_the_largest_drift() -> None:
    trend = MemoryTrend.of(_rows([100, 300, 400, 400, 420, 410, 400, 380]), warmup=0.25)
    assert (trend.baseline_mb, trend.end_mb, trend.min_mb, trend.max_mb, trend.samples) == (400, 380, 380, 420, 6)
    assert trend.drift == pytest.approx(0.05)
    growing = MemoryTrend.of(_rows([400, 400, 430, 460, 490]), warmup=0.0)
    assert growing.drift == pytest.approx(0.225)
    empty = MemoryTrend.of([{"t": 0.0, "resident_memory_mb": math.nan}], warmup=0.25)
    assert empty.samples == 0 and math.isnan(empty.drift)


def _soak(statuses: list[str], memory: list[float]) -> SoakResult:
    records = [RequestRecord(concurrency=2, index=i, status=s, output_tokens=4 if s == "ok" else 0, latency=0.1)
               for i, s in enumerate(statuses)]  # fmt: skip
    level = LevelSummary.of(2, records, 1.0)
    load = LoadTestResult(label="soak", url="http://127.0.0.1:1", settings={}, levels=[level], requests=records,
                          monitor=_rows(memory))  # fmt: skip
    return SoakResult(config=SoakConfig(warmup=0.0), load=load, memory=MemoryTrend.of(load.monitor, 0.0))


def test_soak_verdict_counts_shed_as_answered_errors_as_lost_and_needs_flat_memory() -> None:
    assert _soak(["ok", "shed", "ok"], [400, 401]).passed
    lost = _soak(["ok", "error", "ok"], [400, 401])
    assert lost.lost == 1 and not lost.passed
    assert not _soak(["ok", "ok"], [400, 460]).passed
    assert not _soak(["ok", "ok"], []).memory_flat  # no samples: flatness not shown
    summary = _soak(["ok", "shed"], [400, 402]).summary()
    assert summary["shed"] == 1 and summary["lost"] == 0 and summary["memory_drift"] == pytest.approx(0.005)


@pytest.mark.parametrize(("field", "value", "message"), [("seconds", 0, "seconds"), ("warmup", 1.0, "warmup"),
                                                         ("memory_tolerance", -1, "memory_tolerance"),
                                                         ("concurrency", 0, "concurrency")])  # fmt: skip
def test_soak_config_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SoakConfig(**{field: value})


def test_a_short_soak_on_the_toy_server_loses_nothing_and_keeps_memory_flat(tmp_path: Path, capsys) -> None:
    config = SoakConfig(seconds=4, concurrency=4, max_tokens=8, monitor_interval=0.2)
    with start_server("embedded-llama", max_batch_size=2, max_queue=1) as server:
        server.wait_ready(timeout=120)
        result = run_soak(server.url, config, progress=False)
        assert main(["soak", server.url, "--seconds", "2", "--concurrency", "2", "--max-tokens", "4",
                     "--out", str(tmp_path)]) == 0  # fmt: skip
    level = result.level
    assert level.ok > 0 and result.lost == 0 and level.ok + level.shed == level.requests
    assert level.shed > 0  # 4 in flight against a batch of 2 and a queue of 1: the server sheds, it does not fail
    assert result.memory.samples >= 5 and result.memory_flat and result.passed
    printed = json.loads(capsys.readouterr().out)
    assert printed["lost"] == 0 and (tmp_path / "data" / "soak.json").is_file()


def test_soak_cli_refuses_a_remote_url(capsys) -> None:
    assert main(["soak", "http://example.com:8000", "--seconds", "1"]) == 2
    assert "only runs against this machine" in capsys.readouterr().err


def test_kill_9_mid_load_is_reported_and_the_restarted_server_serves_again() -> None:
    result = crash_and_restart("embedded-llama", concurrency=4, requests=48, max_tokens=16, kill_after_tokens=32,
                               timeout=120)  # fmt: skip
    during, after = result.during.levels[0], result.after.levels[0]
    assert result.killed_after_tokens >= 32
    assert during.errors > 0 and during.ok + during.errors + during.shed == during.requests
    assert after.ok == after.requests == 4 and after.errors == 0 and result.passed
