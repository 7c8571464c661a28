"""Run every benchmark, print a summary and write benchmarks/RESULTS.md (``make bench``).

    .venv/bin/python benchmarks/run.py                 # all benchmarks (~12-15 min on 2 shared cores)
    .venv/bin/python benchmarks/run.py --quick         # tiny sizes, seconds; prints only (no RESULTS.md)
    .venv/bin/python benchmarks/run.py --only pruning  # one benchmark (RESULTS.md then holds only that one)

Performance is measured as ratios of variants run side by side in this one process (interleaved repetitions,
medians), at ONE torch thread: the machines this runs on have few cores shared with other work, where OpenMP
with several threads thrashes. Benchmarks: ``pruning`` and ``finetune`` (ratios against the issue's targets, on
toy and random models), ``real_model`` (the same checks plus memory estimates on SmolLM2-135M-Instruct; skipped
with the install command when its wheel is missing), ``runs_cli`` (seconds against its own target) and
``spelling_eval`` when that module exists. A benchmark that fails is reported with its error and the others
still run; the exit status is 1 then. A missed target is reported, not an error. ``benchmarks/memory_estimates.py``
is separate (it rewrites docs/memory-estimates.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # loaded by file path too (tests): find the shared harness beside it
from _timing import load_benchmark  # noqa: E402
RESULTS = HERE / "RESULTS.md"
RAW = HERE / "results.json"  # every benchmark's last full result, so that --only keeps the others in RESULTS.md
BENCHMARKS = ("pruning", "finetune", "real_model", "runs_cli", "spelling_eval", "compression")
RUNS_CLI_TARGET_S = 1.0  # benchmarks/runs_cli.py: the runs command under 1 s end to end


def normalize(name: str, raw: Any) -> dict[str, Any]:
    """Return a benchmark's result as ``{"name", "checks", "figures", "settings"}`` whatever it returned.

    ``pruning``, ``finetune`` and ``real_model`` already return that shape (``real_model`` adds ``"skipped"``, the
    reason, when its model is not installed: kept); ``runs_cli`` returns flat figures (a check against its 1 s
    target is added); any other flat dict becomes figures with no check.
    """
    if isinstance(raw, dict) and "checks" in raw:
        result = {"name": name, "checks": list(raw["checks"]), "figures": dict(raw.get("figures", {})),
                  "settings": dict(raw.get("settings", {}))}  # fmt: skip
        if raw.get("skipped"):
            result["skipped"] = str(raw["skipped"])
        return result
    figures = dict(raw) if isinstance(raw, dict) else {"result": raw}
    checks = []
    if name == "runs_cli" and isinstance(figures.get("cli_subprocess_s"), int | float):
        seconds = float(figures["cli_subprocess_s"])
        checks.append(
            {
                "name": f"`python -m colab_helpers runs` at {figures.get('runs', '?')} runs, end to end",
                "target": f"<= {RUNS_CLI_TARGET_S:g} s (absolute)",
                "measured": seconds,
                "passed": seconds <= RUNS_CLI_TARGET_S,
                "detail": f"best of 3; Python start-up alone {figures.get('python_startup_s', '?')} s, "
                f"in-process {figures.get('cli_in_process_s', '?')} s",
            }
        )
    if name == "spelling_eval" and isinstance(figures.get("speedup"), int | float):
        target = float(figures.get("target_speedup", 3.0))
        speedup = float(figures["speedup"])
        checks.append(
            {
                "name": "spelling evaluation: batched generation vs one prompt at a time (speed-up)",
                "target": f">= {target:g}x",
                "measured": speedup,
                "passed": speedup >= target,
                "detail": f"{figures.get('prompts', '?')} prompts, batch {figures.get('batch_size', '?')}, "
                f"{figures.get('new_tokens', '?')} new tokens; answers identical: {figures.get('identical_answers')}",
            }
        )
    return {"name": name, "checks": checks, "figures": figures, "settings": {}}


def run_benchmark(name: str, module: Any, quick: bool) -> dict[str, Any]:
    """Run one benchmark module's ``run()``; return its normalized result with ``seconds`` and ``error``."""
    started = time.perf_counter()
    try:
        accepts_quick = "quick" in inspect.signature(module.run).parameters
        if quick and not accepts_quick:
            result = {"name": name, "checks": [], "figures": {}, "settings": {}, "skipped": "no quick mode"}
        else:
            raw = module.run(quick=quick) if accepts_quick else module.run()
            result = normalize(name, raw)
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
        traceback.print_exc()
        result = {"name": name, "checks": [], "figures": {}, "settings": {}, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def machine() -> dict[str, Any]:
    """Return what the figures depend on: CPU count, library versions, torch threads, date, load."""
    import peft
    import torch
    import transformers

    return {
        "CPU count": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[dict[str, Any]], info: dict[str, Any], command: str, seconds: float) -> str:
    """Return RESULTS.md: the machine, a summary, and per benchmark its settings, checks and raw figures."""
    checks = [c for r in results for c in r["checks"]]
    met = sum(c["passed"] for c in checks)
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run.py` (do not edit by hand; run it again). Every ratio compares variants run",
        "side by side in this one process: repetitions interleaved (the order rotating every round) after one",
        "warm-up each, medians taken. **All measurements use one torch thread** (`torch.set_num_threads(1)`):",
        "the machine's cores are shared with other work, and OpenMP with several threads thrashes under load.",
        "Times are the process's CPU time (`time.process_time`: at one thread, the work done rather than the time",
        "other processes held the core); wall-clock ratios are in the details. Even so, repeated runs on a shared",
        "machine move ratios by a few percent (the gating rows show an A/A ratio of two identical forwards): a",
        "ratio within a few percent of its target is not resolved either way.",
        "",
        (
            f"Command: `{command}`{' (what `make bench` runs)' if command.endswith('run.py') else ''}, "
            f"{seconds / 60:.1f} min in all."
        ),
        "",
        "## Machine",
        "",
        "| " + " | ".join(info) + " |",
        "|" + "---|" * len(info),
        "| " + " | ".join(_cell(v) for v in info.values()) + " |",
        "",
        f"## Summary: {met} of {len(checks)} targets met",
        "",
        "| benchmark | check | target | measured | result |",
        "|---|---|---|---:|---|",
    ]
    for result in results:
        for c in result["checks"]:
            lines.append(
                f"| {result['name']} | {_cell(c['name'])} | {_cell(c['target'])} | {_cell(c['measured'])} | "
                f"{'pass' if c['passed'] else '**miss**'} |"
            )
        if result.get("error"):
            lines.append(f"| {result['name']} | (failed) | | | **error** |")
        elif result.get("skipped"):
            lines.append(f"| {result['name']} | (skipped: {result['skipped']}) | | | |")
    for result in results:
        measured = f" Measured {result['measured']}." if result.get("measured") else ""
        lines += ["", f"## {result['name']}", "", f"{result['seconds']} s.{measured}"]
        if result.get("error"):
            lines += ["", f"**Failed**: `{_cell(result['error'])}`"]
        if result.get("skipped"):
            lines += ["", f"Skipped: {result['skipped']}."]
        if result["settings"]:
            lines += [""] + [f"- {key}: {_cell(value)}" for key, value in result["settings"].items()]
        if result["checks"]:
            lines += ["", "| check | target | measured | result | detail |", "|---|---|---:|---|---|"]
            for c in result["checks"]:
                lines.append(
                    f"| {_cell(c['name'])} | {_cell(c['target'])} | {_cell(c['measured'])} | "
                    f"{'pass' if c['passed'] else '**miss**'} | {_cell(c['detail'])} |"
                )
        if result["figures"]:
            lines += ["", "<details><summary>All figures</summary>", "", "| figure | value |", "|---|---:|"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in result["figures"].items()]
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def merge_previous(results: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Return ``results`` plus the last results in ``results.json`` of the benchmarks not run now (in
    ``BENCHMARKS`` order), and rewrite that file; each result carries the date it was measured."""
    import json

    from colab_helpers.runtime.files import atomic_write_text

    date = info.get("date (UTC)", "")
    fresh = {r["name"]: {**r, "measured": date} for r in results}
    try:
        previous = {r["name"]: r for r in json.loads(RAW.read_text(encoding="utf-8"))}
    except (OSError, ValueError, TypeError, KeyError):
        previous = {}
    merged = {**previous, **fresh}
    ordered = [merged[name] for name in BENCHMARKS if name in merged]
    atomic_write_text(RAW, json.dumps(ordered, indent=1, default=str) + "\n")
    return ordered


def summary(results: list[dict[str, Any]]) -> str:
    """Return the console summary: one line per check, error or skip."""
    lines = []
    for result in results:
        if result.get("error"):
            lines.append(f"ERROR {result['name']}: {result['error']}")
        if result.get("skipped"):
            lines.append(f"skip  {result['name']}: {result['skipped']}")
        for c in result["checks"]:
            status = "pass" if c["passed"] else "MISS"
            lines.append(f"{status:5} {result['name']}: {c['name']}: {_cell(c['measured'])} (target {c['target']})")
        if not result["checks"] and not result.get("error") and not result.get("skipped"):
            lines.append(f"info  {result['name']}: {result['figures']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write benchmarks/RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds; does not write RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--output", type=Path, help=f"where to write the results (default {RESULTS.relative_to(ROOT)}; "
                        "with --quick nothing is written unless this is given)")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    command = " ".join([".venv/bin/python" if "/.venv/" in sys.executable else "python", "benchmarks/run.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    info = machine()
    started = time.perf_counter()
    results = []
    for name in args.only or BENCHMARKS:
        module = load_benchmark(name)
        if module is None:
            print(f"skip  {name}: benchmarks/{name}.py does not exist", flush=True)
            continue
        print(f"--- {name} ...", flush=True)
        results.append(run_benchmark(name, module, args.quick))
        print(f"--- {name}: {results[-1]['seconds']} s", flush=True)
    seconds = time.perf_counter() - started
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(summary(results))
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is not None:
        from colab_helpers.runtime.files import atomic_write_text

        if output == RESULTS:  # the default: the benchmarks not run this time keep their last results
            results = merge_previous(results, info)
        atomic_write_text(output, render(results, info, command, seconds))
        print(f"wrote {output}")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
