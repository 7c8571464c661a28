"""Time the runs table at 10,000 runs: ``python -m colab_helpers runs`` end to end and in-process, and one write.

    python benchmarks/runs_cli.py        # prints one line; run() returns the figures as a dict

Target: the command under 1 second end to end on a 2-core CPU machine.
"""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colab_helpers.runtime.files import atomic_write_text
from colab_helpers.experiments.cli import main
from colab_helpers.experiments.runs_table import CORE_COLUMNS, format_value, render_table
from colab_helpers.experiments.run_ids import config_hash, new_run_id
from colab_helpers.experiments.tracking import RunManager

RUNS = 10_000
REPEATS = 3
QUERY = [
    "--filter-sweep", "sweep_3",
    "--filter", "training.learning_rate>0.001", "model.name!=opt-125m",
    "--sort-by", "final_valid_loss",
    "--limit", "20",
]


def build_runs_csv(root: Path, runs: int = RUNS, seed: int = 0) -> Path:
    """Write a ``runs.csv`` of ``runs`` realistic rows (config, metrics, statuses) under ``root``; return it."""
    rng = random.Random(seed)
    header = list(CORE_COLUMNS)
    rows = []
    for index in range(runs):
        config = {
            "model.name": rng.choice(["distilgpt2", "gpt2", "opt-125m", "pythia-70m"]),
            "model.context_length": 256,
            "pruning.strategy": rng.choice(["random", "entropy", "gradient"]),
            "pruning.level": rng.choice([0.1, 0.2, 0.3, 0.4, 0.5]),
            "training.learning_rate": 10 ** rng.uniform(-5, -2),
            "training.batch_size": rng.choice([4, 8, 16]),
            "training.steps": rng.choice([100, 200, 500]),
            "lora.rank": rng.choice([4, 8, 16]),
            "lora.alpha": 16,
            "seed": index % 5,
        }
        status = rng.choices(["done", "failed", "running"], weights=[90, 8, 2])[0]
        row = {
            "run_id": new_run_id(),
            "sweep": f"sweep_{index % 10}",
            "status": status,
            "started_at": "2026-11-23T00:00:00.000Z",
            "ended_at": "" if status == "running" else "2026-11-23T00:05:00.000Z",
            "duration_s": "" if status == "running" else "300.000",
            "error": "CUDA out of memory. Tried to allocate 20.00 MiB" if status == "failed" else "",
            "config_hash": config_hash(config),
            "env": "colab (interactive) | cuda: Tesla T4 (cc 7.5, 14.7 GB free of 15.0 GB) | dtype float16",
            "version": "0.1.0",
        }
        row.update({key: format_value(value) for key, value in config.items()})
        if status == "done":
            metrics = {
                "baseline_perplexity": rng.uniform(20, 40),
                "pruned_perplexity": rng.uniform(30, 90),
                "final_valid_loss": rng.uniform(2.5, 4.5),
                "final_valid_perplexity": rng.uniform(12, 90),
                "heads_pruned": rng.randint(1, 70),
                "params_m": rng.uniform(60, 125),
                "peak_memory_mb": rng.uniform(500, 9000),
            }
            row.update({key: format_value(value) for key, value in metrics.items()})
        for key in row:
            if key not in header:
                header.append(key)
        rows.append(row)
    return atomic_write_text(root / "runs.csv", render_table(header, rows))


def _best(function: Callable[[], Any], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def run() -> dict[str, Any]:
    """Build the 10,000-run table in a temp dir and return the timings (seconds, best of 3)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = build_runs_csv(root)
        argv = ["runs", "--root", str(root), *QUERY]

        def subprocess_cli() -> None:
            subprocess.run([sys.executable, "-m", "colab_helpers", *argv], check=True, capture_output=True)

        def in_process_cli() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(argv) == 0

        in_process_cli()  # the first call pays pandas' import; best of 3 excludes it anyway
        manager = RunManager(root, record_environment=False)
        run_id = manager.runs()["run_id"].iloc[RUNS // 2]
        counter = iter(range(1000))
        figures = {
            "runs": RUNS,
            "csv_mb": round(csv_path.stat().st_size / 1e6, 2),
            "cli_subprocess_s": round(_best(subprocess_cli), 3),
            "cli_in_process_s": round(_best(in_process_cli), 3),
            "python_startup_s": round(_best(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)), 3),
            "update_metrics_s": round(_best(lambda: manager.update_metrics(run_id, {"extra": next(counter)})), 3),
        }
    print(
        f"runs CLI at {figures['runs']} runs ({figures['csv_mb']} MB): end to end {figures['cli_subprocess_s']} s "
        f"(python startup {figures['python_startup_s']} s), in-process {figures['cli_in_process_s']} s; "
        f"one update_metrics {figures['update_metrics_s']} s"
    )
    return figures


if __name__ == "__main__":
    run()
