"""Figures of a served model under load: throughput and latency against concurrency (one line per server, e.g.
unpruned and compressed side by side), and the server's own metrics over the load test.

Drawn from plain data (the rows a load test saves), like every figure of :mod:`colab_helpers.plots`: each function
returns a figure that shows itself in a notebook and, given ``path``, is saved as a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .base import finish_figure, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (row key of the p50 line, of the p99 line, panel title, unit scale, axis label)
_LATENCY_PANELS = (
    ("latency_p50", "latency_p99", "end-to-end latency", 1.0, "seconds"),
    ("ttft_p50", "ttft_p99", "time to first token", 1000.0, "milliseconds"),
    ("itl_p50", "itl_p99", "inter-token latency", 1000.0, "milliseconds"),
)
_MONITOR_PANELS = (
    ("queue_depth", "requests waiting (queue depth)"),
    ("active_sequences", "sequences decoding"),
    ("batch_size", "mean batch size since last sample"),
    ("resident_memory_mb", "resident memory (MiB)"),
)


def _column(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    values = []
    for row in rows:
        value = row.get(key)
        values.append(float(value) * scale if isinstance(value, int | float) and math.isfinite(value) else math.nan)
    return values


def _concurrency_axis(ax: Any, levels: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(levels)))
    ax.set_xticklabels([str(level) for level in sorted(set(levels))])
    ax.set_xlabel("concurrent requests")
    ax.grid(True, alpha=0.3)


def plot_serving(
    levels: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str = "Serving under load",
    path: str | os.PathLike[str] | None = None,
) -> Figure:  # fmt: skip
    """Four panels against concurrency: output tokens/s, then end-to-end latency, time to first token and
    inter-token latency (p50 solid, p99 dashed), one colour per server.

    ``levels`` maps a label ("unpruned", "compressed") to its level rows (``LevelSummary`` as dicts: keys
    ``concurrency``, ``output_tokens_per_s``, ``latency_p50`` ...). Levels without an answered request are gaps.
    """
    figure = new_figure(13.0, 3.4)
    axes = figure.subplots(1, 4)
    every_level: list[int] = []
    for index, (label, rows) in enumerate(levels.items()):
        color = f"C{index}"
        concurrency = [int(row["concurrency"]) for row in rows]
        every_level += concurrency
        axes[0].plot(concurrency, _column(rows, "output_tokens_per_s"), "o-", color=color, label=label)
        for ax, (p50, p99, _, scale, _) in zip(axes[1:], _LATENCY_PANELS):
            ax.plot(concurrency, _column(rows, p50, scale), "o-", color=color, label=f"{label} p50")
            ax.plot(concurrency, _column(rows, p99, scale), "s--", color=color, alpha=0.7, label=f"{label} p99")
    axes[0].set_title("output tokens / s (all requests)", fontsize=10, loc="left")
    axes[0].set_ylabel("tokens / s")
    for ax, (_, _, name, _, unit) in zip(axes[1:], _LATENCY_PANELS):
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylabel(unit)
    for ax in axes:
        _concurrency_axis(ax, every_level or [1])
        ax.set_ylim(bottom=0)
    if levels:
        axes[0].legend(fontsize="x-small")
    figure.suptitle(f"{title}: latencies at p50 (solid) and p99 (dashed)", fontsize=11)
    return finish_figure(figure, path)


def plot_monitoring(
    series: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str = "The server's metrics during the load test",
    path: str | os.PathLike[str] | None = None,
) -> Figure:  # fmt: skip
    """Four panels over the seconds of each load test: queue depth, sequences decoding, mean batch size and
    resident memory, one colour per server. ``series`` maps a label to its monitoring rows (key ``t`` and the
    panels' keys; see ``colab_helpers.deploy.monitor``). A label without rows is listed as "no metrics"."""
    figure = new_figure(11.0, 5.2)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    missing = [label for label, rows in series.items() if not rows]
    for index, (label, rows) in enumerate(series.items()):
        if not rows:
            continue
        t = _column(rows, "t")
        for ax, (key, _) in zip(axes, _MONITOR_PANELS):
            style = "o" if key == "batch_size" else "-"
            ax.plot(t, _column(rows, key), style, color=f"C{index}", markersize=3, linewidth=1.2, label=label)
    for ax, (_, name) in zip(axes, _MONITOR_PANELS):
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("seconds since the load test started")
    if any(ax.lines for ax in axes):
        axes[0].legend(fontsize="x-small")
    note = f" (no metrics: {', '.join(missing)})" if missing else ""
    figure.suptitle(title + note, fontsize=11)
    return finish_figure(figure, path)


__all__ = ["plot_monitoring", "plot_serving"]
