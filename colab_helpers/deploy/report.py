"""The deployment report: load tests of several servers (unpruned, compressed ...) side by side, as figures under
``<out_dir>/figures/`` and one self-contained HTML page under ``<out_dir>/reports/``.

    python -m colab_helpers report results/deployment            # every saved load test in results/deployment/data
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .loadresult import LoadTestResult, load_results

REPORT_NAME = "deployment.html"


def _by_label(results: Mapping[str, LoadTestResult] | Sequence[LoadTestResult]) -> dict[str, LoadTestResult]:
    found = dict(results) if isinstance(results, Mapping) else {result.label: result for result in results}
    if not found:
        raise ValueError("results is empty; pass the load tests to report, e.g. {'unpruned': a, 'compressed': b}")
    return found


def _ratio(numerator: float, denominator: float) -> float:
    ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (numerator, denominator)) and denominator > 0
    return numerator / denominator if ok else math.nan


def ratio_table(results: Mapping[str, LoadTestResult], baseline: str) -> Any:
    """Each other label against ``baseline`` at every concurrency both ran: output tokens/s ratio (higher is
    better) and p99 end-to-end latency ratio (lower is better)."""
    import pandas as pd

    base = {level.concurrency: level for level in results[baseline].levels}
    rows = []
    for label, result in results.items():
        if label == baseline:
            continue
        for level in result.levels:
            if level.concurrency in base:
                other = base[level.concurrency]
                rows.append({"label": label, "vs": baseline, "concurrency": level.concurrency,
                             "tokens_per_s_ratio": _ratio(level.output_tokens_per_s, other.output_tokens_per_s),
                             "latency_p99_ratio": _ratio(level.latency_p99, other.latency_p99)})  # fmt: skip
    return pd.DataFrame(rows)


def batching_table(results: Mapping[str, LoadTestResult]) -> Any:
    """Each label's output tokens/s at every level over its tokens/s at its lowest level (the batching gain)."""
    import pandas as pd

    rows = []
    for label, result in results.items():
        if not result.levels:
            continue
        first = min(result.levels, key=lambda level: level.concurrency)
        for level in result.levels:
            rows.append({"label": label, "concurrency": level.concurrency, "vs_concurrency": first.concurrency,
                         "tokens_per_s_gain": _ratio(level.output_tokens_per_s, first.output_tokens_per_s)})  # fmt: skip
    return pd.DataFrame(rows)


def deployment_figures(results: Mapping[str, LoadTestResult] | Sequence[LoadTestResult],
                       figures_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The report's figures (``serving``, ``monitoring``), saved as PNG under ``figures_dir`` when given."""
    from dataclasses import asdict

    from ..plots.deployment import plot_monitoring, plot_serving

    found = _by_label(results)
    where = Path(figures_dir) if figures_dir is not None else None
    levels = {label: [asdict(level) for level in result.levels] for label, result in found.items()}
    monitor = {label: result.monitor for label, result in found.items()}
    return {
        "serving": plot_serving(levels, path=where / "serving.png" if where else None),
        "monitoring": plot_monitoring(monitor, path=where / "monitoring.png" if where else None),
    }


def write_deployment_report(
    results: Mapping[str, LoadTestResult] | Sequence[LoadTestResult], out_dir: str | os.PathLike[str], *,
    baseline: str | None = None, sections: Mapping[str, Any] | None = None, path: str | os.PathLike[str] | None = None,
) -> Path:  # fmt: skip
    """Write the figures to ``<out_dir>/figures/`` and the HTML report to ``<out_dir>/reports/deployment.html``
    (or ``path``); return the report's path.

    ``baseline`` is the label the others are compared with (default: "unpruned" when present, else the first);
    ``sections`` (heading -> DataFrame, figure or HTML) are appended, e.g. the exported models' sizes on disk.
    """
    from ..plots.report import write_html_report
    from .loadtest import levels_table

    found = _by_label(results)
    baseline = baseline or ("unpruned" if "unpruned" in found else next(iter(found)))
    if baseline not in found:
        raise ValueError(f"baseline {baseline!r} is not one of the labels {sorted(found)}; pass one of them")
    out = Path(out_dir)
    figures = deployment_figures(found, out / "figures")
    failures = {label: result.failures for label, result in found.items() if result.failures}
    body: dict[str, Any] = {
        "Throughput and latency against concurrency": figures["serving"],
        "Every level": levels_table(list(found.values())).round(4),
        f"Against {baseline} at the same concurrency": ratio_table(found, baseline).round(3),
        "Batching: output tokens/s over the lowest concurrency's": batching_table(found).round(3),
        "The server's metrics during the load test": figures["monitoring"],
        "Settings": _settings_html(found),
    }
    body.update(sections or {})
    intro = (f"Load tests of {', '.join(found)} on this machine (loopback). "
             + (f"Requests that failed: {failures}." if failures else "Every request was answered or shed."))  # fmt: skip
    return write_html_report(path or out / "reports" / REPORT_NAME, "Serving the model", body, intro=intro)


def _settings_html(results: Mapping[str, LoadTestResult]) -> str:
    import html

    rows = "".join(f"<li><b>{html.escape(label)}</b> at {html.escape(result.url)}, started {html.escape(result.started)}: "
                   f"{html.escape(_short_settings(result.settings))}</li>" for label, result in results.items())  # fmt: skip
    return f"<ul>{rows}</ul>"


def _short_settings(settings: Mapping[str, Any]) -> str:
    keys = ("concurrency", "requests_per_level", "max_seconds", "max_tokens", "endpoint", "stream")
    return ", ".join(f"{key}={settings[key]}" for key in keys if key in settings)


def add_parser(commands: Any) -> None:
    """``python -m colab_helpers report DIR [--out FILE]``."""
    parser = commands.add_parser("report", help="figures and an HTML report of the saved load tests in DIR")
    parser.add_argument("dir", help="deployment results folder (its data/ holds the load tests), e.g. results/deployment")
    parser.add_argument("--out", metavar="FILE", help="the HTML report (default: DIR/reports/deployment.html)")
    parser.add_argument("--baseline", metavar="LABEL", help="label the others are compared with (default: unpruned)")


def run(args: argparse.Namespace) -> int:
    """Write the report of ``args.dir``; print where it went."""
    results = load_results(args.dir)
    path = write_deployment_report(results, args.dir, baseline=args.baseline, path=args.out)
    print(f"report of {', '.join(results)}: {path} (figures in {Path(args.dir) / 'figures'})")
    return 0


__all__ = ["batching_table", "deployment_figures", "ratio_table", "write_deployment_report"]
