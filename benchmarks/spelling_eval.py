"""Time the spelling study's evaluation: 256 prompts generated in batches against one prompt at a time.

    python benchmarks/spelling_eval.py        # prints one line; run() returns the figures as a dict

The embedded GPT-2 (1M parameters) on the CPU, greedy decoding of 8 new tokens, answers asserted identical.
Target: batched evaluation at least 3x faster than one prompt at a time.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = 256
BATCH_SIZE = 64
NEW_TOKENS = 8
TARGET_SPEEDUP = 3.0


def _prompts(tokenizer: Any, count: int) -> list[str]:
    """Return ``count`` prompts of all three tasks from the test split (plain "Q: ...\\nA:" format)."""
    from colab_helpers.spelling.data import build_datasets

    words = -(-count // 3)  # each test word gives one prompt per task
    data = build_datasets(tokenizer, train_size=1, validation_size=1, test_size=words, seed=0)
    return data["test"]["prompt"][:count]


def run(prompts: int = PROMPTS, batch_size: int = BATCH_SIZE, new_tokens: int = NEW_TOKENS, *,
        quick: bool = False) -> dict[str, Any]:
    """Return the timings: seconds batched and one at a time, prompts per second, and the speed-up ratio.

    ``quick=True`` times 32 prompts (seconds, for ``benchmarks/run.py --quick``).
    """
    from colab_helpers.models.loading import load_model
    from colab_helpers.spelling import generate_answers

    if quick:
        prompts, batch_size = min(prompts, 32), min(batch_size, 32)

    model, tokenizer = load_model("embedded-gpt2", device="cpu")
    texts = _prompts(tokenizer, prompts)
    generate_answers(model, tokenizer, texts[:8], max_new_tokens=new_tokens, batch_size=8)  # warm-up
    started = time.perf_counter()
    batched = generate_answers(model, tokenizer, texts, max_new_tokens=new_tokens, batch_size=batch_size)
    batched_seconds = time.perf_counter() - started
    started = time.perf_counter()
    single = generate_answers(model, tokenizer, texts, max_new_tokens=new_tokens, batch_size=1)
    single_seconds = time.perf_counter() - started
    mismatches = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]
    assert not mismatches, f"batched and one-at-a-time answers differ at prompts {mismatches[:5]}"
    speedup = single_seconds / batched_seconds
    return {
        "prompts": len(texts),
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "batched_seconds": round(batched_seconds, 3),
        "one_at_a_time_seconds": round(single_seconds, 3),
        "batched_prompts_per_second": round(len(texts) / batched_seconds, 1),
        "speedup": round(speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": speedup >= TARGET_SPEEDUP,
        "identical_answers": True,
    }


if __name__ == "__main__":
    result = run()
    print(
        f"{result['prompts']} prompts: batched (x{result['batch_size']}) {result['batched_seconds']} s, one at a time "
        f"{result['one_at_a_time_seconds']} s -> {result['speedup']}x (target >= {result['target_speedup']}x, "
        f"{'met' if result['meets_target'] else 'NOT met'}); answers identical"
    )
