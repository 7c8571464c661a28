"""The timing harness every benchmark shares: interleaved rounds, CPU-time medians, ratios, result rows."""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def load_benchmark(name: str) -> ModuleType | None:
    """Return ``benchmarks/<name>.py`` as module ``bench_<name>`` (reusing one already loaded), or None when the
    file does not exist. Benchmarks are files, not a package: run.py, other benchmarks and tests load them so."""
    loaded = sys.modules.get(f"bench_{name}")
    if loaded is not None:
        return loaded
    path = HERE / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, *, warmup: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Return ``{"cpu": {name: [seconds]}, "wall": {name: [seconds]}}`` over ``repeats`` rounds.

    The variants run one after another within a round, in an order that rotates every round, so slow drift of
    the machine's load falls on all of them alike; with ``warmup`` each runs once first, untimed. ``cpu`` is
    this process's CPU time (``time.process_time``): at one torch thread it counts the work done and not the
    time other processes held the core, which is what makes ratios stable on a shared machine. A callable
    that returns a ``(cpu, wall)`` pair of floats reports its own window (e.g. the steps inside ``train()``).
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, dict[str, list[float]]] = {"cpu": {n: [] for n in names}, "wall": {n: [] for n in names}}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            cpu, wall = time.process_time(), time.perf_counter()
            reported = variants[name]()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if isinstance(reported, tuple) and len(reported) == 2:
                cpu, wall = reported
            times["cpu"][name].append(float(cpu))
            times["wall"][name].append(float(wall))
    return times


def ratio(times: dict[str, dict[str, list[float]]], numerator: str, denominator: str, clock: str = "cpu") -> float:
    """Return median(numerator) / median(denominator) on ``clock`` ("cpu" or "wall")."""
    series = times[clock]
    return statistics.median(series[numerator]) / statistics.median(series[denominator])


def median(times: dict[str, dict[str, list[float]]], name: str, clock: str = "cpu") -> float:
    """Return the median seconds of variant ``name`` on ``clock``."""
    return statistics.median(times[clock][name])


def paired_spread(times: dict[str, dict[str, list[float]]], numerator: str, denominator: str) -> str:
    """Return the per-round CPU-time ratios' range and the wall-clock ratio, for the detail column."""
    ratios = [a / b for a, b in zip(times["cpu"][numerator], times["cpu"][denominator], strict=True)]
    wall = ratio(times, numerator, denominator, "wall")
    return f"per-round {min(ratios):.3f}-{max(ratios):.3f}; wall-clock ratio {wall:.3f}"


def check(name: str, target: str, measured: float, passed: bool, detail: str) -> dict[str, Any]:
    """Return one result row: ``{"name", "target", "measured", "passed", "detail"}``."""
    measured = round(float(measured), 4)
    return {"name": name, "target": target, "measured": measured, "passed": bool(passed), "detail": detail}


def command_line(run: Callable[..., dict[str, Any]], description: str) -> None:
    """Run one benchmark from the shell (``--quick`` for tiny sizes) and print its checks, one line each."""
    import argparse
    import math

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for smoke tests")
    result = run(quick=parser.parse_args().quick)
    if result.get("skipped"):
        print(f"skipped: {result['skipped']}")
        return
    for row in result["checks"]:
        status = "pass" if row["passed"] else "MISS"
        print(f"{status:4}  {row['name']}: {row['measured']} (target {row['target']}) - {row['detail']}")
    print(f"settings: {result['settings']}")
    if any(not math.isfinite(v) for v in result.get("figures", {}).values() if isinstance(v, float)):
        raise SystemExit("non-finite figure")


def checks_markdown(checks: list[dict[str, Any]]) -> list[str]:
    """The rows of :func:`check` as the lines of a Markdown table (pass / MISS in words)."""
    lines = ["| check | target | measured | result | detail |", "|---|---|---:|---|---|"]
    return lines + [f"| {c['name']} | {c['target']} | {c['measured']} | {'pass' if c['passed'] else 'MISS'} | "
                    f"{c['detail']} |" for c in checks]  # fmt: skip


def write_marked_section(doc: Path, start: str, end: str, section: str, title: str) -> Path:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) in place of the text between those markers
    in ``doc``, or at its end; ``doc`` is created with ``title`` when missing. Written atomically."""
    import re

    from colab_helpers.runtime.files import atomic_write_text

    text = doc.read_text(encoding="utf-8") if doc.is_file() else f"# {title}\n\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    return atomic_write_text(doc, text)
