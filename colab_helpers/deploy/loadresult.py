"""What a load test measured: one row per request, one summary per concurrency level, the server's metrics over
time, and their files (JSON for everything, CSV for the request and level tables), written atomically.

    results/deployment/data/<label>.json            the whole result (LoadTestResult.to_dict)
    results/deployment/data/<label>_levels.csv      one row per concurrency level
    results/deployment/data/<label>_requests.csv    one row per request
    results/deployment/data/<label>_monitor.csv     the /metrics samples over the run
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text

PERCENTILES = (50, 95, 99)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_label(label: Any) -> str:
    """Return ``label`` when it can name result files (letters, digits, ``_ . -``, at most 64); else ValueError."""
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError(f"label must be 1-64 letters, digits, '_', '.' or '-' (it names the result files), "
                         f"got {label!r}; e.g. label='compressed'")  # fmt: skip
    return label


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation; NaN when there are none."""
    ordered = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class RequestRecord:
    """One request of a load test. ``status`` is "ok", "shed" (429: the server's queue was full) or "error"
    (any other HTTP status, a broken connection, a timeout); times are seconds, ``start`` from the level's start."""

    concurrency: int
    index: int
    status: str
    http_status: int | None = None
    start: float = 0.0
    latency: float = math.nan
    ttft: float = math.nan
    output_tokens: int = 0
    token_gaps: list[float] = field(default_factory=list)  # seconds between successive streamed tokens
    error: str = ""

    def row(self) -> dict[str, Any]:
        """The CSV row: the gaps summarised as their mean (``itl_mean``)."""
        data = asdict(self)
        gaps = data.pop("token_gaps")
        data["itl_mean"] = sum(gaps) / len(gaps) if gaps else math.nan
        return data


@dataclass
class LevelSummary:
    """One concurrency level: counts, throughput and latency percentiles (seconds) over its requests."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    shed: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens: int
    ttft_p50: float = math.nan
    ttft_p95: float = math.nan
    ttft_p99: float = math.nan
    itl_p50: float = math.nan
    itl_p95: float = math.nan
    itl_p99: float = math.nan
    latency_p50: float = math.nan
    latency_p95: float = math.nan
    latency_p99: float = math.nan

    @classmethod
    def of(cls, concurrency: int, records: Sequence[RequestRecord], duration_s: float) -> LevelSummary:
        """Summarise ``records`` of one level that ran ``duration_s`` seconds (throughput counts answered ones)."""
        done = [r for r in records if r.status == "ok"]
        tokens = sum(r.output_tokens for r in done)
        seconds = max(duration_s, 1e-9)
        stats: dict[str, float] = {}
        series = {"ttft": [r.ttft for r in done], "itl": [g for r in done for g in r.token_gaps],
                  "latency": [r.latency for r in done]}  # fmt: skip
        for name, values in series.items():
            for q in PERCENTILES:
                stats[f"{name}_p{q}"] = percentile(values, q)
        return cls(concurrency=concurrency, requests=len(records), ok=len(done),
                   errors=sum(r.status == "error" for r in records), shed=sum(r.status == "shed" for r in records),
                   duration_s=duration_s, requests_per_s=len(done) / seconds, output_tokens_per_s=tokens / seconds,
                   output_tokens=tokens, **stats)  # fmt: skip


@dataclass
class LoadTestResult:
    """A whole load test: its label and settings (no secret), one summary per level, every request, and the
    server's metrics sampled over the run (``monitor``: plain dicts, see :mod:`.monitor`)."""

    label: str
    url: str
    settings: dict[str, Any]
    levels: list[LevelSummary]
    requests: list[RequestRecord]
    monitor: list[dict[str, Any]] = field(default_factory=list)
    started: str = ""

    @property
    def failures(self) -> int:
        """Requests that got no answer (errors, not counting 429 shedding)."""
        return sum(level.errors for level in self.levels)

    def level(self, concurrency: int) -> LevelSummary:
        """The summary of the level at ``concurrency``; KeyError naming the levels run when there is none."""
        for level in self.levels:
            if level.concurrency == concurrency:
                return level
        raise KeyError(f"no level at concurrency {concurrency} in {self.label!r}; "
                       f"it ran {[lv.concurrency for lv in self.levels]}")  # fmt: skip

    def levels_frame(self):  # noqa: ANN201 - pandas.DataFrame
        """The level summaries as a DataFrame (one row per concurrency)."""
        import pandas as pd

        return pd.DataFrame([asdict(level) for level in self.levels])

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "url": self.url, "started": self.started, "settings": dict(self.settings),
                "levels": [asdict(level) for level in self.levels],
                "requests": [asdict(record) for record in self.requests], "monitor": list(self.monitor)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadTestResult:
        return cls(label=data["label"], url=data["url"], started=data.get("started", ""),
                   settings=dict(data.get("settings", {})),
                   levels=[LevelSummary(**_known(LevelSummary, level)) for level in data["levels"]],
                   requests=[RequestRecord(**_known(RequestRecord, row)) for row in data.get("requests", [])],
                   monitor=list(data.get("monitor", [])))  # fmt: skip

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the JSON and the three CSV tables under ``directory`` (atomically); return their paths."""
        root = Path(directory)
        tables = {"levels": [asdict(level) for level in self.levels],
                  "requests": [record.row() for record in self.requests], "monitor": self.monitor}  # fmt: skip
        paths = [atomic_write_text(root / f"{self.label}.json", json.dumps(_finite(self.to_dict()), indent=1) + "\n")]
        for name, rows in tables.items():
            paths.append(atomic_write_text(root / f"{self.label}_{name}.csv", _csv(rows)))
        return paths


def _known(kind: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` restricted to the fields of dataclass ``kind``, with JSON nulls back to NaN for float fields."""
    names = {f.name: f for f in fields(kind)}
    out = {}
    for key, value in data.items():
        if key in names:
            out[key] = math.nan if value is None and names[key].type == "float" else value
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinity as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text, columns in first-seen order (empty text for no rows)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue() if columns else ""


def load_results(directory: str | os.PathLike[str]) -> dict[str, LoadTestResult]:
    """Every saved load test under ``directory`` (a deployment folder, or its ``data/``), by label, in name order.

    FileNotFoundError naming the folder and the command that writes them when there is none.
    """
    root = Path(directory)
    data = root / "data" if (root / "data").is_dir() else root
    found = {}
    for path in sorted(data.glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(payload, dict) and {"label", "levels"} <= set(payload):
            result = LoadTestResult.from_dict(payload)
            found[result.label] = result
    if not found:
        raise FileNotFoundError(f"no load-test results in {str(data)!r}; write them with "
                                "`python -m colab_helpers loadtest URL --label NAME --out DIR`")  # fmt: skip
    return found


__all__ = ["LevelSummary", "LoadTestResult", "RequestRecord", "check_label", "load_results", "percentile"]
