"""Check estimate_memory against measured peaks and write the table into docs/memory-estimates.md.

Each case runs in a fresh Python process (``measure_peak_memory``): a random-weight model built from its
config (nothing is downloaded), then a no-grad forward pass (inference) or two training steps with AdamW
(``full``; ``lora`` through peft on the attention and MLP projections). The child's peak resident memory
(``ru_maxrss``) is compared with the estimate for the same case on the CPU in float32.

    python benchmarks/memory_estimates.py            # every case, rewrites the table in the doc (~10-20 min)
    python benchmarks/memory_estimates.py --quick    # the small cases tests/test_models_memory_estimate.py runs
    python benchmarks/memory_estimates.py --jobs 2 --no-write

The tiny ``embedded-*`` cases measure the process baseline (Python + torch + transformers and a model of
1M parameters) that ``CPU_BASELINE_BYTES`` in colab_helpers/models/memory_estimate.py is set from.
``estimate_vs_measured`` (one case, a config or a loaded model) is what ``benchmarks/real_model.py`` runs on
SmolLM2-135M-Instruct for ``make bench``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import AutoConfig  # noqa: E402  (imported here: its lazy imports are not thread-safe)

from colab_helpers.models.memory_estimate import estimate_memory  # noqa: E402
from colab_helpers.models.peak_memory import measure_peak_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "memory-estimates.md"
START, END = "<!-- measured-table:start -->", "<!-- measured-table:end -->"
MB = 1024**2

# Small random-weight models (10-30M parameters, most of it embeddings): the shapes the tests measure.
SMALL: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-16M": ("gpt2", dict(n_layer=4, n_head=4, n_embd=256, vocab_size=50257, n_positions=512)),
    "llama-21M": ("llama", dict(num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                                intermediate_size=688, vocab_size=32000, max_position_embeddings=512)),
    "neox-29M": ("gpt_neox", dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=256, intermediate_size=1024,
                                  vocab_size=50304, max_position_embeddings=512)),
    "opt-16M": ("opt", dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=256, ffn_dim=1024, vocab_size=50272,
                            word_embed_proj_dim=256, max_position_embeddings=512)),
    "qwen2-82M": ("qwen2", dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=256,
                                intermediate_size=1024, vocab_size=151936, max_position_embeddings=512)),
    "bloom-67M": ("bloom", dict(n_layer=4, n_head=4, hidden_size=256, vocab_size=250880)),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One measured case: a catalog name or a ``SMALL`` shape, a mode, batch x seq and estimate options."""

    model: str
    mode: str
    batch_size: int
    seq_len: int
    options: dict[str, Any] = field(default_factory=dict)
    quick: bool = False

    @property
    def label(self) -> str:
        """Return e.g. ``"gpt2 lora 4x256 (eager)"``."""
        extra = ", ".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.model} {self.mode} {self.batch_size}x{self.seq_len}" + (f" ({extra})" if extra else "")

    def config(self) -> Any:
        """Return the transformers config of this case's model."""
        if self.model in SMALL:
            family, kwargs = SMALL[self.model]
            return AutoConfig.for_model(family, **kwargs)
        from colab_helpers.models.registry import get_entry

        return get_entry(self.model).to_config()


CASES: tuple[Case, ...] = (
    # the process baseline: a 1M-parameter model, so nearly all of the peak is Python + torch + transformers
    Case("embedded-gpt2", "inference", 8, 128),
    Case("embedded-gpt2", "full", 8, 128),
    Case("embedded-llama", "lora", 8, 128),
    # the small cases of tests/test_models_memory_estimate.py
    Case("gpt2-16M", "full", 4, 128, quick=True),
    Case("llama-21M", "lora", 4, 128, quick=True),
    Case("neox-29M", "inference", 8, 256, quick=True),
    Case("opt-16M", "lora", 4, 128, quick=True),
    # big vocabularies: logits and loss dominate; BLOOM attention is eager (ALiBi)
    Case("qwen2-82M", "lora", 2, 128),
    Case("bloom-67M", "lora", 2, 128),
    # catalog-sized models
    Case("pythia-70m", "inference", 4, 256),
    Case("pythia-70m", "lora", 4, 256),
    Case("pythia-70m", "full", 4, 256),
    Case("gpt2", "inference", 4, 256),
    Case("gpt2", "inference", 4, 256, {"attn_implementation": "eager"}),
    Case("gpt2", "lora", 4, 256),
    Case("gpt2", "lora", 4, 256, {"gradient_checkpointing": True}),
    Case("gpt2", "full", 2, 256),
    Case("smollm2-135m", "inference", 4, 256),
    Case("smollm2-135m", "lora", 4, 256),
    Case("smollm2-135m", "full", 2, 256),
)


def estimate_vs_measured(model: Any, mode: str, batch_size: int, seq_len: int, **options: Any) -> dict[str, Any]:
    """Return ``{"params", "estimate", "measured", "ratio", "seconds"}`` for one case, float32 on the CPU.

    ``model`` is a transformers config or a loaded model: ``estimate_memory`` reads it (a loaded model's real
    parameters are counted) and ``measure_peak_memory`` builds a random-weight model from its config in a fresh
    process (the child inherits this process's environment, e.g. ``OMP_NUM_THREADS``).
    """
    config = model.config if hasattr(model, "named_parameters") else model
    start = time.perf_counter()
    kwargs = dict(batch_size=batch_size, seq_len=seq_len, dtype="float32", device="cpu", **options)
    estimate = estimate_memory(model, mode, **kwargs)
    measured = measure_peak_memory(config, mode, **kwargs)
    return {
        "params": estimate.params,
        "estimate": estimate.total,
        "measured": measured["peak"],
        "ratio": measured["peak"] / estimate.total,
        "seconds": time.perf_counter() - start,
    }


def run_case(case: Case) -> dict[str, Any]:
    """Return the estimate, the measurement and their ratio for ``case`` (the measurement in a fresh process)."""
    return {"case": case.label, **estimate_vs_measured(case.config(), case.mode, case.batch_size, case.seq_len,
                                                       **case.options)}  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Return the results as a Markdown table: case, parameters, estimate, measured peak RSS, ratio."""
    lines = [
        "| Case | Parameters | Estimate (MB) | Measured peak RSS (MB) | Measured / estimate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['params'] / 1e6:.1f}M | {row['estimate'] / MB:,.0f} | "
            f"{row['measured'] / MB:,.0f} | {row['ratio']:.2f} |"
        )
    worst = max(rows, key=lambda row: abs(row["ratio"] - 1))
    lines.append("")
    lines.append(f"Largest deviation: {worst['case']}, measured/estimate = {worst['ratio']:.2f}.")
    return "\n".join(lines)


def write_doc(table: str, command: str) -> None:
    """Replace the generated section of docs/memory-estimates.md with ``table``, the command and the date."""
    import torch
    import transformers

    stamp = dt.date.today().isoformat()
    section = (
        f"{START}\n"
        f"Generated on {stamp} by `{command}` on {platform.machine()} Linux, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__} "
        f"(float32 on the CPU; each case in a fresh process).\n\n{table}\n{END}"
    )
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else f"# Memory estimates\n\n{START}\n{END}\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    from colab_helpers.runtime.files import atomic_write_text

    atomic_write_text(DOC, text)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print one line each, and (unless --no-write) rewrite the doc's table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small cases the tests run")
    parser.add_argument("--jobs", type=int, default=1, help="cases measured at once (each in its own process)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/memory-estimates.md alone")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    cases = [case for case in CASES if case.quick or not args.quick]
    for case in cases:
        case.config()  # warm transformers' lazy imports in this thread before the pool uses them
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(run_case, cases):
            rows.append(row)
            print(
                f"{row['case']:55s} estimate {row['estimate'] / MB:7.0f} MB  measured {row['measured'] / MB:7.0f} MB  "
                f"ratio {row['ratio']:.2f}  ({row['seconds']:.0f} s)",
                flush=True,
            )
    table = markdown_table(rows)
    if not args.no_write:
        command = "python benchmarks/memory_estimates.py" + "".join(f" {arg}" for arg in (argv or sys.argv[1:]))
        write_doc(table, command)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
