"""Pruning benchmarks, as ratios taken side by side in one run (CPU, one torch thread).

    python benchmarks/pruning.py            # GPT-2-small-sized random model, 4 x 256 tokens (~4-5 min)
    python benchmarks/pruning.py --quick    # a tiny model, seconds (what tests/test_benchmarks.py runs)

What is measured (issue targets in brackets):

- **Gating overhead** [<= 1.03x]: forward with ``gate_heads`` gates vs no hooks. All-keep gates install no hook
  at all (by design), so the real cost of hooks is measured too: one head gated off in every layer, so every
  layer's output projection runs the gate multiply.
- **Removal speed-up** [within 10% of the FLOPs prediction]: 50% of the heads of every layer removed
  (``scope="layer"``); the measured latency ratio unpruned / pruned against the ratio of the two models' FLOPs,
  counted from their actual shapes after removal (``forward_flops``). ``benchmarks/real_model.py`` runs the same
  ``removal_speedup`` on SmolLM2-135M-Instruct with a gradient-importance mask, where grouped-query attention
  leaves some pruned heads as zeroed padding: they keep their weights, so they count as cost.
- **Importance cost**: the entropy pass vs a plain eager forward over the same tokens [<= 1.5x]; the gradient
  pass vs a forward + backward (weight gradients included, as in training) over the same tokens [<= 1.2x].

Each comparison interleaves its variants (the order rotates every repetition) after one warm-up call each and
takes the ratio of the medians of the process's CPU time (wall-clock ratios are reported alongside: on a shared
machine they carry the other processes' noise). ``run()`` returns ``{"name", "checks", "figures", "settings"}``;
each check has ``target``, ``measured``, ``passed`` and a ``detail`` line.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file path: find the shared harness beside it
from _timing import check, command_line, interleaved, median, paired_spread, ratio  # noqa: E402
from colab_helpers.pruning.flops import forward_flops  # noqa: E402  (re-exported: tests and real_model.py use it from here)

TARGET_GATING = 1.03
TARGET_REMOVAL_AGREEMENT = 0.10  # |measured / predicted - 1|
TARGET_ENTROPY = 1.5
TARGET_GRADIENT = 1.2

# (model config, batch, seq, repeats per comparison): full = GPT-2 small (GPT2Config defaults), quick = a toy
# gating: 4 variants, removal: 2, entropy: 2, gradient: 2 -> repeats that are multiples give every variant
# every position in the rotation equally often
FULL = dict(config={}, batch=4, seq=256, repeats={"gating": 8, "removal": 6, "entropy": 4, "gradient": 2})
QUICK = dict(
    config=dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0),
    batch=2,
    seq=32,
    repeats={"gating": 1, "removal": 1, "entropy": 1, "gradient": 1},
)


def build_gpt2(overrides: dict[str, Any], seed: int = 0) -> Any:
    """Return a random-weight GPT-2 (``GPT2Config(**overrides)``) in eval mode, dropout off."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    config = GPT2Config(**overrides, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_config(config).eval()


def _one_head_per_layer(layout: Any) -> Any:
    import torch

    mask = torch.zeros(layout.num_layers, layout.max_heads, dtype=torch.bool)
    mask[:, 0] = True
    return mask


def gating_overhead(model: Any, ids: Any, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Forward without hooks vs all-keep gates vs one head gated per layer; return (checks, figures)."""
    import torch

    from colab_helpers.pruning import gate_heads, head_layout

    one_per_layer = _one_head_per_layer(head_layout(model))

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    def gated(mask: Any) -> Callable[[], None]:
        def call() -> None:
            with gate_heads(model, mask):
                forward()

        return call

    variants = {"no_hooks": forward, "all_keep": gated(None), "one_per_layer": gated(one_per_layer),
                "no_hooks_again": forward}  # fmt: skip
    times = interleaved(variants, repeats)
    noise = ratio(times, "no_hooks_again", "no_hooks")  # A/A: the resolution of this measurement
    hook_seconds = _hook_seconds(model, one_per_layer, ids.shape)
    with gate_heads(model, one_per_layer) as handle:
        hooked = sum(h is not None for h in handle._handles)
    with gate_heads(model) as handle:
        hooked_all_keep = sum(h is not None for h in handle._handles)
    layers = len(one_per_layer)
    checks = []
    for name, label, hooks in (
        ("all_keep", "all-keep gates", hooked_all_keep),
        ("one_per_layer", "one head gated per layer", hooked),
    ):
        value = ratio(times, name, "no_hooks")
        checks.append(
            check(
                f"gating overhead: {label} vs no hooks",
                f"<= {TARGET_GATING}x",
                value,
                value <= TARGET_GATING,
                f"{hooks} of {layers} layers hooked; {paired_spread(times, name, 'no_hooks')}; A/A (no hooks vs "
                f"no hooks) {noise:.3f}" + (
                    f"; the {hooks} hooks alone, timed in isolation: {hook_seconds * 1000:.1f} ms per forward = "
                    f"{hook_seconds / median(times, 'no_hooks'):.2%}" if hooks else ""
                ),
            )
        )
    figures = {
        "forward_cpu_s": median(times, "no_hooks"),
        "forward_wall_s": median(times, "no_hooks", "wall"),
        "gating_all_keep_ratio": ratio(times, "all_keep", "no_hooks"),
        "gating_one_per_layer_ratio": ratio(times, "one_per_layer", "no_hooks"),
        "gating_one_per_layer_wall_ratio": ratio(times, "one_per_layer", "no_hooks", "wall"),
        "gating_hooked_layers_all_keep": hooked_all_keep,
        "gating_hooked_layers_one_per_layer": hooked,
        "gating_noise_floor_aa_ratio": noise,
        "gating_hooks_alone_cpu_s": hook_seconds,
        "gating_hooks_alone_share": hook_seconds / median(times, "no_hooks"),
    }
    return checks, figures


def _hook_seconds(model: Any, mask: Any, shape: tuple[int, ...], repeats: int = 9) -> float:
    """Return the CPU seconds the gate hooks of ``mask`` take per forward, called directly on inputs of the
    attention output projection's shape (median of ``repeats``): the cost of gating without the model's noise."""
    import torch

    from colab_helpers.pruning import gate_heads
    from colab_helpers.pruning.layout import attention_sites

    sites = attention_sites(model)
    with gate_heads(model, mask), torch.no_grad():
        calls = [
            (hook, site.out_proj, torch.randn(*shape, site.n_q * site.head_dim))
            for site in sites
            for hook in site.out_proj._forward_pre_hooks.values()
        ]
        seconds = []
        for _ in range(repeats):
            started = time.process_time()
            for hook, module, x in calls:
                hook(module, (x,))
            seconds.append(time.process_time() - started)
    return statistics.median(seconds)


def removal_speedup(
    model: Any, ids: Any, repeats: int, *, mask: Any = None, what: str = "50% of heads per layer"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Latency of ``model`` vs a copy with the heads of ``mask`` removed; return (checks, figures).

    ``mask`` defaults to 50% of every layer's heads chosen at random; ``what`` names the selection in the check.
    The prediction is the FLOPs ratio of the two models' actual shapes after removal (:func:`forward_flops`),
    so heads kept as zeroed padding for grouped-query attention count as cost, as they do in the measurement.
    """
    import torch

    from colab_helpers.pruning import head_importance, remove_heads, select_heads

    pruned = copy.deepcopy(model)
    if mask is None:
        mask = select_heads(head_importance(pruned, None, "random", seed=0), 0.5, scope="layer")
    report = remove_heads(pruned, mask)
    batch, seq = ids.shape

    def forward(target: Any) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                target(input_ids=ids, use_cache=False)

        return call

    times = interleaved({"unpruned": forward(model), "pruned": forward(pruned)}, repeats)
    measured = ratio(times, "unpruned", "pruned")
    predicted = forward_flops(model, batch, seq) / forward_flops(pruned, batch, seq)
    agreement = measured / predicted
    causal = forward_flops(model, batch, seq, causal=True) / forward_flops(pruned, batch, seq, causal=True)
    realized = (1 - 1 / measured) / (1 - 1 / predicted)  # share of the predicted time saving that happened
    removed_share = report.removed_params / report.params_before
    pruned_heads, padding = int(mask.sum()), sum(report.padding_heads)
    del pruned
    check_row = check(
        f"removal speed-up ({what}): measured / FLOPs-predicted",
        f"within {TARGET_REMOVAL_AGREEMENT:.0%} (0.90-1.10)",
        agreement,
        abs(agreement - 1) <= TARGET_REMOVAL_AGREEMENT,
        f"measured {measured:.3f}x ({paired_spread(times, 'unpruned', 'pruned')}), predicted {predicted:.3f}x "
        f"({causal:.3f}x counting causal attention only); time saved {1 - 1 / measured:.1%} of a predicted "
        f"{1 - 1 / predicted:.1%} ({realized:.0%} of it); {pruned_heads} heads pruned"
        + (f", {padding} of them kept as zeroed padding (grouped-query attention)" if padding else "")
        + f"; params {report.params_before:,} -> {report.params_after:,} ({removed_share:.1%} removed)",
    )
    figures = {
        "removal_measured_speedup": measured,
        "removal_predicted_speedup": predicted,
        "removal_agreement": agreement,
        "removal_predicted_speedup_causal": causal,
        "removal_saving_realized": realized,
        "removal_heads_pruned": pruned_heads,
        "removal_padding_heads": padding,
        "removal_params_before": report.params_before,
        "removal_params_after": report.params_after,
        "removal_params_removed_share": removed_share,
        "removal_unpruned_cpu_s": median(times, "unpruned"),
        "removal_pruned_cpu_s": median(times, "pruned"),
        "removal_wall_speedup": ratio(times, "unpruned", "pruned", "wall"),
    }
    return [check_row], figures


def importance_cost(
    model: Any, ids: Any, repeats: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Entropy pass vs eager forward, gradient pass vs forward + backward; return (checks, figures)."""
    import torch

    from colab_helpers.pruning import head_importance

    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the entropy pass needs eager; the baseline then runs eager too
    try:

        def eager_forward() -> None:
            with torch.no_grad():
                model(**batches[0], use_cache=False)

        entropy_times = interleaved(
            {
                "eager_forward": eager_forward,
                "entropy": lambda: head_importance(model, batches, "entropy", progress=False),
            },
            repeats["entropy"],
        )
    finally:
        model.set_attn_implementation(previous)

    def forward_backward() -> None:
        loss = model(**batches[0], labels=ids, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    gradient_times = interleaved(
        {
            "forward_backward": forward_backward,
            "gradient": lambda: head_importance(model, batches, "gradient", progress=False),
        },
        repeats["gradient"],
    )
    entropy = ratio(entropy_times, "entropy", "eager_forward")
    gradient = ratio(gradient_times, "gradient", "forward_backward")
    checks = [
        check(
            "importance cost: entropy pass vs eager forward",
            f"<= {TARGET_ENTROPY}x",
            entropy,
            entropy <= TARGET_ENTROPY,
            f"eager forward {median(entropy_times, 'eager_forward'):.2f} s CPU; "
            f"{paired_spread(entropy_times, 'entropy', 'eager_forward')}",
        ),
        check(
            "importance cost: gradient pass vs forward + backward",
            f"<= {TARGET_GRADIENT}x",
            gradient,
            gradient <= TARGET_GRADIENT,
            f"forward + backward {median(gradient_times, 'forward_backward'):.2f} s CPU (sdpa, weight gradients "
            f"included); {paired_spread(gradient_times, 'gradient', 'forward_backward')}",
        ),
    ]
    figures = {
        "entropy_ratio": entropy,
        "gradient_ratio": gradient,
        "eager_forward_cpu_s": median(entropy_times, "eager_forward"),
        "entropy_pass_cpu_s": median(entropy_times, "entropy"),
        "forward_backward_cpu_s": median(gradient_times, "forward_backward"),
        "gradient_pass_cpu_s": median(gradient_times, "gradient"),
        "entropy_wall_ratio": ratio(entropy_times, "entropy", "eager_forward", "wall"),
        "gradient_wall_ratio": ratio(gradient_times, "gradient", "forward_backward", "wall"),
    }
    return checks, figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the pruning benchmarks at one torch thread and return ``{"name", "checks", "figures", "settings"}``."""
    import torch

    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        model = build_gpt2(plan["config"])
        batch, seq = plan["batch"], plan["seq"]
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        repeats = plan["repeats"]
        checks: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        for part in (
            lambda: gating_overhead(model, ids, repeats["gating"]),
            lambda: removal_speedup(model, ids, repeats["removal"]),
            lambda: importance_cost(model, ids, repeats),
        ):
            part_checks, part_figures = part()
            checks += part_checks
            figures.update(part_figures)
        config = model.config
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    finally:
        torch.set_num_threads(threads)
    figures = {key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()}
    settings = {
        "model": f"random GPT-2, {config.n_layer} layers x {config.n_head} heads, width {config.n_embd}, "
        f"vocab {config.vocab_size} ({params / 1e6:.1f}M parameters), eval mode, sdpa attention",
        "batch": f"{batch} x {seq} tokens",
        "repeats": ", ".join(f"{k} {v}" for k, v in repeats.items()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"name": "pruning", "checks": checks, "figures": figures, "settings": settings}


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
