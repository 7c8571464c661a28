"""Fine-tuning benchmarks, as ratios taken side by side in one run (CPU, one torch thread).

    python benchmarks/finetune.py            # embedded-gpt2 and a random 6-layer x 384 GPT-2 (~2-3 min)
    python benchmarks/finetune.py --quick    # tiny runs, seconds (what tests/test_benchmarks.py runs)

What is measured (issue targets in brackets):

- **Guarded step** [<= 1.10x time per step]: our ``FineTuner`` (NaN/inf checks with one host sync, history rows,
  rollback snapshots every ``snapshot_every`` steps, callbacks, a progress bar) against a plain loop of peft +
  torch AdamW (forward, backward, clipping, step, ``loss.item()``) on the same model, the same LoRA settings and
  seed, the same sequences in the same order and the same learning-rate schedule. ``compare_steps`` takes any
  model key ``load_model`` knows, or an already loaded model: ``benchmarks/real_model.py`` runs it on
  SmolLM2-135M-Instruct. Time per step is taken over
  the steps only (first step to last), not the set-up or the final checkpoint. The per-step losses of the two
  loops are compared as a check that they really train the same thing.
- **Live plot** [<= 5% of training time]: the CPU time spent inside the live plot (``LivePlot.update``, ``mark``
  and ``close``, which hold every render) over the rest of ``train()``, in a run of realistic length in a
  simulated notebook kernel (outside a kernel the live plot draws only once, at the end): the figure is rendered
  to PNG exactly as in a notebook, only the hand-over to the browser is skipped. ``train()`` with
  ``live_plot=True`` and ``False`` also run side by side as a cross-check; on a shared machine the difference of
  two ~18 s totals is noisier (+-5-10%) than the few percent it should show, so it is not the measure.

Times are the process's CPU time (``time.process_time``: at one torch thread, the work done, not the time other
processes held the core), medians of interleaved repetitions; wall-clock ratios are reported alongside.

``run()`` returns ``{"name", "checks", "figures", "settings"}`` like ``benchmarks/pruning.py``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file path: find the shared harness beside it
from _timing import check, command_line, interleaved, median, ratio  # noqa: E402
from unittest import mock

TARGET_STEP = 1.10
TARGET_LIVE_PLOT = 0.05

# model key -> (steps per run, micro-batch, seq_len, repetitions) of the step comparison
FULL = {"embedded-gpt2": (30, 4, 128, 5), "gpt2-6x384": (10, 4, 128, 3)}
QUICK = {"embedded-gpt2": (2, 2, 32, 1)}
# the live plot's cost is mostly fixed (a render at the first step and one at the end) plus one render per
# plot_every_seconds: it needs a run of realistic length, here ~15-20 s of training
LIVE_PLOT_FULL = (200, 4, 128, 3)
LIVE_PLOT_QUICK = (2, 2, 32, 1)
TRAIN_PARAGRAPHS = {False: 600, True: 40}  # of the embedded corpus (tokenizing all of it takes ~2 s per run)


# random-weight GPT-2 shapes (trained with the embedded tokenizer); any other key is a model load_model knows
RANDOM_GPT2 = {"gpt2-6x384": dict(n_layer=6, n_head=6, n_embd=384)}


def build_model(key: str) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` on the CPU for a benchmark model key.

    ``RANDOM_GPT2`` keys are random-weight GPT-2s with the embedded tokenizer; any other key (``embedded-gpt2``,
    ``smollm2-135m-instruct``) is loaded with ``colab_helpers.models.loading.load_model``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from colab_helpers.models.loading import load_model

    if key not in RANDOM_GPT2:
        return load_model(key, device="cpu")
    _, tokenizer = load_model("embedded-gpt2", device="cpu")
    torch.manual_seed(0)
    config = GPT2Config(
        **RANDOM_GPT2[key], vocab_size=len(tokenizer), n_positions=256, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def _schedule(step: int, warmup: int, max_steps: int) -> float:
    """The learning-rate factor FineTuner uses (linear warm-up, cosine to 10%), for the plain loop."""
    if step <= warmup:
        return step / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _step_sequences(blocks: Any, seed: int, step: int, count: int, orders: dict[int, Any]) -> Any:
    """The sequences FineTuner trains on at ``step``: a seeded permutation of the blocks per epoch."""
    import torch

    n = blocks.shape[0]
    rows = []
    for position in range((step - 1) * count, step * count):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows.append(orders[epoch][offset])
    return blocks[torch.stack(rows)]


def plain_loop(base: Any, token_ids: Any, cfg: Any, losses: list[float]) -> tuple[float, float]:
    """Train a copy of ``base`` with plain peft + AdamW for ``cfg.max_steps``; return (CPU, wall) s per step."""
    import torch
    from peft import LoraConfig, get_peft_model

    from colab_helpers.finetune.lora import resolve_targets

    model = copy.deepcopy(base)
    targets, _ = resolve_targets(model, cfg.target_modules)
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(targets))
    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    blocks = token_ids[: (token_ids.numel() // cfg.seq_len) * cfg.seq_len].view(-1, cfg.seq_len)
    orders: dict[int, Any] = {}
    model.train()
    losses.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    for step in range(1, cfg.max_steps + 1):
        ids = _step_sequences(blocks, cfg.seed, step, cfg.micro_batch_size, orders)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * _schedule(step, cfg.warmup_steps, cfg.max_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    steps = cfg.max_steps
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def _fake_show_png(png: bytes, handle: Any | None) -> Any:
    """Stands in for IPython's display: the PNG was rendered, nothing is sent to a browser."""
    return handle if handle is not None else object()


def guarded_run(
    base: Any, tokenizer: Any, texts: list[str], cfg: Any, *, live_plot: bool, notebook: bool, record: dict[str, Any]
) -> tuple[float, float]:
    """Train a copy of ``base`` with ``FineTuner``; return (CPU, wall) seconds per step and fill ``record``.

    The steps are timed from ``on_train_begin`` to the last ``on_step_end``. ``record`` gets ``losses`` (per
    step), ``train_cpu_s`` and ``train_wall_s`` (the whole ``train()`` call), ``redraws`` (renders of the live
    plot, the closing one included), ``plot_cpu_s`` (CPU time spent inside the live plot's ``update``, ``mark``
    and ``close``: recording, renders, the final PNG) and ``plot`` (the LivePlot, for timing a render).
    """
    from colab_helpers.finetune import Callback, FineTuner, LivePlotCallback

    class Stamps(Callback):
        def on_train_begin(self, tuner: Any) -> None:
            self.begin = self.last = (time.process_time(), time.perf_counter())
            self.losses: list[float] = []

        def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
            self.last = (time.process_time(), time.perf_counter())
            self.losses.append(row["loss"])

        def on_train_end(self, tuner: Any, result: Any) -> None:
            plots = [cb.plot for cb in tuner._callbacks if isinstance(cb, LivePlotCallback)]
            record["plot"] = plots[0] if plots else None  # its closing render comes after this callback

    stamps = Stamps()
    kernel = (
        mock.patch.multiple("colab_helpers.plots.live", _in_kernel=lambda: True, _show_png=_fake_show_png)
        if notebook
        else contextlib.nullcontext()
    )
    plot_seconds = [0.0]
    timed = _timed_live_plot(plot_seconds)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()), kernel, timed:
        config = copy.copy(cfg)
        config.output_dir = tmp
        tuner = FineTuner(copy.deepcopy(base), tokenizer, texts, None, config, callbacks=[stamps], live_plot=live_plot)
        cpu, wall = time.process_time(), time.perf_counter()
        tuner.train()
        record["train_cpu_s"], record["train_wall_s"] = time.process_time() - cpu, time.perf_counter() - wall
    record["redraws"] = record["plot"].redraws if record["plot"] is not None else 0
    record["plot_cpu_s"] = plot_seconds[0]
    record["losses"] = stamps.losses
    steps = cfg.max_steps
    return (stamps.last[0] - stamps.begin[0]) / steps, (stamps.last[1] - stamps.begin[1]) / steps


def _timed_live_plot(total: list[float]) -> contextlib.ExitStack:
    """Patch ``LivePlot.update``, ``mark`` and ``close`` to add their CPU time to ``total[0]`` (renders included:
    they happen inside those calls); return the context that undoes it."""
    from colab_helpers.plots import live as plotting

    stack = contextlib.ExitStack()
    for name in ("update", "mark", "close"):
        original = getattr(plotting.LivePlot, name)

        def timed(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return _original(self, *args, **kwargs)
            finally:
                total[0] += time.process_time() - started

        stack.enter_context(mock.patch.object(plotting.LivePlot, name, timed))
    return stack


def _config(steps: int, micro: int, seq: int) -> Any:
    from colab_helpers.finetune import FineTuneConfig

    return FineTuneConfig(
        max_steps=steps, micro_batch_size=micro, seq_len=seq, warmup_steps=2, checkpoint_every=None, dtype="fp32",
        backend="peft", seed=0,
    )  # fmt: skip


def _median_render_seconds(plot: Any, times: int = 3) -> float:
    """Median time of one full render of ``plot`` (what each live redraw costs)."""
    seconds = []
    for _ in range(times):
        started = time.process_time()
        plot._render()
        seconds.append(time.process_time() - started)
    return statistics.median(seconds)


def _setup(key: str, quick: bool, loaded: tuple[Any, Any] | None = None) -> tuple[Any, Any, list[str], Any]:
    """Return ``(model, tokenizer, training paragraphs, their token ids)`` for a benchmark model key
    (``loaded``: a ``(model, tokenizer)`` already in memory, used instead of building the key's model again)."""
    from colab_helpers.evaluation.data import load_text_dataset
    from colab_helpers.evaluation.perplexity import tokenize_texts

    base, tokenizer = loaded if loaded is not None else build_model(key)
    texts = load_text_dataset("embedded").train[: TRAIN_PARAGRAPHS[quick]]
    return base, tokenizer, texts, tokenize_texts(tokenizer, texts)


def compare_steps(
    key: str, plan: tuple[int, int, int, int], quick: bool, *, warmup: bool, loaded: tuple[Any, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time per step of FineTuner (as ``fine_tune`` runs by default) vs the plain loop; return (checks, figures).

    ``plan`` is ``(steps per run, micro-batch, seq_len, repetitions)``; ``loaded`` a ``(model, tokenizer)`` of
    ``key`` already in memory (``benchmarks/real_model.py`` passes the real model it loaded once).
    """
    steps, micro, seq, repeats = plan
    base, tokenizer, texts, token_ids = _setup(key, quick, loaded)
    cfg = _config(steps, micro, seq)
    plain_losses: list[float] = []
    record: dict[str, Any] = {}
    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "plain": lambda: plain_loop(base, token_ids, cfg, plain_losses),
        # live_plot=True as fine_tune's default; outside a notebook it only records values until the end
        "guarded": lambda: guarded_run(base, tokenizer, texts, cfg, live_plot=True, notebook=False, record=record),
    }
    times = interleaved(variants, repeats, warmup=warmup)
    step_ratio = ratio(times, "guarded", "plain")
    diff = max(abs(a - b) for a, b in zip(plain_losses, record["losses"], strict=True))
    params = sum(p.numel() for p in base.parameters())
    label = f"{key} ({params / 1e6:.1f}M params, {micro} x {seq} tokens, {steps} steps)"
    checks = [
        check(
            f"guarded step vs plain peft + AdamW loop: {key}",
            f"<= {TARGET_STEP}x",
            step_ratio,
            step_ratio <= TARGET_STEP,
            f"{label}: plain {median(times, 'plain') * 1000:.0f} ms/step, guarded "
            f"{median(times, 'guarded') * 1000:.0f} ms/step (CPU); wall-clock ratio "
            f"{ratio(times, 'guarded', 'plain', 'wall'):.3f}; per-step losses of the two loops differ by <= {diff:.2g}",
        )
    ]
    figures: dict[str, Any] = {
        f"{key}_plain_step_cpu_s": median(times, "plain"),
        f"{key}_guarded_step_cpu_s": median(times, "guarded"),
        f"{key}_step_ratio": step_ratio,
        f"{key}_step_wall_ratio": ratio(times, "guarded", "plain", "wall"),
        f"{key}_loss_max_abs_diff": diff,
    }
    return checks, figures


def compare_live_plot(
    key: str, plan: tuple[int, int, int, int], quick: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``train()`` time with the live plot on vs off, in a simulated notebook; return (checks, figures)."""
    steps, micro, seq, repeats = plan
    base, tokenizer, texts, _ = _setup(key, quick)
    cfg = _config(steps, micro, seq)
    records: dict[str, dict[str, Any]] = {"without": {}, "with": {}}
    train: dict[str, dict[str, list[float]]] = {"cpu": {"without": [], "with": []}, "wall": {"without": [], "with": []}}
    plot_cpu: list[float] = []

    def variant(name: str) -> Callable[[], None]:
        def call() -> None:
            record = records[name]
            guarded_run(base, tokenizer, texts, cfg, live_plot=name == "with", notebook=True, record=record)
            if name == "with":
                plot_cpu.append(record["plot_cpu_s"])
            train["cpu"][name].append(record["train_cpu_s"])
            train["wall"][name].append(record["train_wall_s"])

        return call

    interleaved({"without": variant("without"), "with": variant("with")}, repeats, warmup=False)
    side_by_side = ratio(train, "with", "without") - 1
    wall_share = ratio(train, "with", "without", "wall") - 1
    share = statistics.median(plot / (total - plot) for plot, total in zip(plot_cpu, train["cpu"]["with"], strict=True))
    render = _median_render_seconds(records["with"]["plot"], 1 if quick else 3)
    from colab_helpers.plots import live as plotting

    spacing = getattr(plotting, "_MAX_DRAW_SHARE_INV", 10)  # LivePlot waits >= this many renders' time
    interval = max(cfg.plot_every_seconds, spacing * render)
    steady = render / interval
    redraws = records["with"]["redraws"]
    detail = (
        f"{key}, {steps} steps of {micro} x {seq} tokens: {statistics.median(plot_cpu):.2f} s CPU inside the live "
        f"plot per run ({redraws} renders of {render:.2f} s: the first step's, one per {interval:.1f} s, the closing "
        f"one) against {median(train, 'without'):.1f} s of training. Side by side, train() took "
        f"{side_by_side:+.1%} CPU ({wall_share:+.1%} wall) with the plot: that difference of two noisy totals is "
        f"the cross-check, not the measure. Long runs tend to {steady:.1%} (render / interval; "
        f"plot_every_seconds={cfg.plot_every_seconds:g} or {spacing}x a render if longer)"
    )
    checks = [
        check(
            "live plot: time inside the live plot / training time (notebook)",
            f"<= {TARGET_LIVE_PLOT:.0%} of training time",
            share,
            share <= TARGET_LIVE_PLOT,
            detail,
        )
    ]
    figures = {
        "live_plot_share": share,
        "live_plot_cpu_s": statistics.median(plot_cpu),
        "live_plot_side_by_side_share": side_by_side,
        "live_plot_wall_share": wall_share,
        "live_plot_render_s": render,
        "live_plot_steady_share": steady,
        "live_plot_redraws": redraws,
        "live_plot_train_cpu_s_without": median(train, "without"),
        "live_plot_train_cpu_s_with": median(train, "with"),
    }
    return checks, figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the fine-tuning benchmarks at one torch thread; return ``{"name", "checks", "figures", "settings"}``."""
    import torch

    plans = QUICK if quick else FULL
    live = LIVE_PLOT_QUICK if quick else LIVE_PLOT_FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    checks: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    try:
        parts = [
            lambda key=key, plan=plan, first=index == 0: compare_steps(key, plan, quick, warmup=first and not quick)
            for index, (key, plan) in enumerate(plans.items())
        ]
        parts.append(lambda: compare_live_plot("embedded-gpt2", live, quick))
        for part in parts:
            part_checks, part_figures = part()
            checks += part_checks
            figures.update(part_figures)
    finally:
        torch.set_num_threads(threads)
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    cfg = _config(1, 1, 2)
    settings = {
        "models": ", ".join(f"{k}: {s} steps of {m} x {q} tokens, {r} repeats" for k, (s, m, q, r) in plans.items()),
        "live plot": f"embedded-gpt2, {live[0]} steps of {live[1]} x {live[2]} tokens, {live[3]} repetitions each way, "
        "in a simulated notebook kernel (renders to PNG, nothing sent to a browser)",
        "lora": f"r {cfg.r}, alpha {cfg.alpha:g}, dropout {cfg.dropout:g}, default targets (attention and MLP), fp32",
        "guarded run": "FineTuner(live_plot=True, progress=True, a timing callback) as fine_tune runs by default; no "
        "eval texts; a checkpoint only at the end (outside the timed steps)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"name": "finetune", "checks": checks, "figures": figures, "settings": settings}


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
