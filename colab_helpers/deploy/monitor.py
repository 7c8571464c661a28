"""The server's own metrics over a load test: ``/metrics`` (Prometheus text) polled every ``interval`` seconds in a
background thread, each poll one plain row (queue depth, sequences decoding, mean batch size since the last poll,
resident memory, requests, shed requests and tokens so far).

A poll that fails (the server is busy starting, or was killed) is counted in ``failed_polls`` and skipped: the
monitor never stops a load test.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from typing import Any

from .loopback import check_loopback

logger = logging.getLogger(__name__)

PREFIX = "colab_helpers_"
# row column -> the summed sample it reads (counters carry the parser's "_total" in their sample name)
_GAUGES = {
    "queue_depth": f"{PREFIX}queue_depth",
    "active_sequences": f"{PREFIX}active_sequences",
    "resident_memory_mb": "process_resident_memory_bytes",
    "requests": f"{PREFIX}requests_total",
    "shed": f"{PREFIX}shed_total",
    "completion_tokens": f'{PREFIX}tokens_total{{kind="completion"}}',
}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{sample name: value summed over labels}`` plus ``name{label="value"}`` per label set
    of one label (``colab_helpers_tokens_total{kind="completion"}``); parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    flat: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            flat[sample.name] += sample.value
            for key, value in sample.labels.items():
                if key != "le":
                    flat[f'{sample.name}{{{key}="{value}"}}'] += sample.value
    return dict(flat)


def metrics_row(flat: dict[str, float], previous: dict[str, float] | None, t: float) -> dict[str, Any]:
    """One monitoring row at ``t`` seconds from ``flat`` (see :func:`parse_metrics`); the batch size is the mean
    over the batches decoded since ``previous`` (NaN when none were)."""
    row: dict[str, Any] = {"t": round(t, 3)}
    for column, name in _GAUGES.items():
        value = flat.get(name, math.nan)
        row[column] = value / 2**20 if column == "resident_memory_mb" and math.isfinite(value) else value
    count, total = flat.get(f"{PREFIX}batch_size_count", 0.0), flat.get(f"{PREFIX}batch_size_sum", 0.0)
    if previous is not None:
        count -= previous.get(f"{PREFIX}batch_size_count", 0.0)
        total -= previous.get(f"{PREFIX}batch_size_sum", 0.0)
    row["batch_size"] = total / count if count > 0 else math.nan
    return row


class MetricsSampler:
    """Polls ``<url>/metrics`` every ``interval`` seconds from :meth:`start` to :meth:`stop` (also a context
    manager); the rows are in ``samples``. Loopback only, like the load test."""

    def __init__(self, url: str, *, interval: float = 0.5, timeout: float = 2.0) -> None:
        self.url = check_loopback(url) + "/metrics"
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.samples: list[dict[str, Any]] = []
        self.failed_polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsSampler:
        """Start polling in a daemon thread; return self."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="colab-helpers-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        """Stop polling (after one last poll) and return the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + self.interval + 1)
            self._thread = None
        return self.samples

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _poll(self) -> None:
        import httpx

        previous = None
        start = time.perf_counter()
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            while True:
                previous = self.sample_once(client, start, previous) or previous
                if self._stop.wait(self.interval):
                    self.sample_once(client, start, previous)
                    return

    def sample_once(self, client: Any, start: float, previous: dict[str, float] | None) -> dict[str, float] | None:
        """Poll once with ``client``: append a row and return the parsed metrics, or None (counted) on failure."""
        try:
            response = client.get(self.url)
            response.raise_for_status()
            flat = parse_metrics(response.text)
        except Exception as exc:  # a server starting, busy or dead: a gap in the series, not an error
            self.failed_polls += 1
            logger.debug("metrics poll failed: %s", type(exc).__name__)
            return None
        self.samples.append(metrics_row(flat, previous, time.perf_counter() - start))
        return flat


__all__ = ["MetricsSampler", "metrics_row", "parse_metrics"]
