"""Fine-tuning benchmarks, as ratios taken side by side in one run (CPU, one torch thread).

    python benchmarks/finetune.py            # embedded-gpt2 and a random 6-layer x 384 GPT-2 (~2-3 min)
    python benchmarks/finetune.py --quick    # tiny runs, seconds (what tests/test_benchmarks.py runs)

What is measured (issue targets in brackets):

- **Guarded step** [<= 1.10x time per step]: our ``FineTuner`` (NaN/inf checks with one host sync, history rows,
  rollback snapshots every ``snapshot_every`` steps, callbacks, a progress bar) against a plain loop of peft +
  torch AdamW (forward, backward, clipping, step, ``loss.item()``) on the same model, the same LoRA settings and
  seed, the same sequences in the same order and the same learning-rate schedule. Time per step is taken over
  the steps only (first step to last), not the set-up or the final checkpoint. Times are the process's CPU
time (``time.process_time``; wall-clock ratios are reported alongside), medians of interleaved repetitions. The per-step losses of the two
  loops are compared as a check that they really train the same thing.
- **Live plot** [<= 5% of training time]: ``train()`` wall time with ``live_plot=True`` against
  ``live_plot=False``, in a simulated notebook kernel (outside a kernel the live plot draws only once, at the
  end): the figure is rendered to PNG exactly as in a notebook, only the hand-over to the browser is skipped.

``run()`` returns ``{"name", "checks", "figures", "settings"}`` like ``benchmarks/pruning.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

TARGET_STEP = 1.10
TARGET_LIVE_PLOT = 0.05

# model key -> (steps per run, micro-batch, seq_len, repetitions); the "embedded" set also measures the live plot
FULL = {"embedded-gpt2": (30, 4, 128, 3), "gpt2-6x384": (10, 4, 128, 3)}
QUICK = {"embedded-gpt2": (2, 2, 32, 1)}
TRAIN_PARAGRAPHS = {False: 600, True: 40}  # of the embedded corpus (tokenizing all of it takes ~2 s per run)


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


def check(name: str, target: str, measured: float, passed: bool, detail: str) -> dict[str, Any]:
    """Return one result row: ``{"name", "target", "measured", "passed", "detail"}``."""
    return {"name": name, "target": target, "measured": round(float(measured), 4), "passed": bool(passed), "detail": detail}


def build_model(key: str) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a benchmark model key; random models use the embedded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from colab_helpers.models import load_model

    model, tokenizer = load_model("embedded-gpt2", device="cpu")
    if key == "embedded-gpt2":
        return model, tokenizer
    sizes = {"gpt2-6x384": dict(n_layer=6, n_head=6, n_embd=384)}
    torch.manual_seed(0)
    config = GPT2Config(
        **sizes[key], vocab_size=len(tokenizer), n_positions=256, bos_token_id=tokenizer.eos_token_id,
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
    plot, the closing one included) and ``plot`` (the LivePlot, for timing a render).
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
        mock.patch.multiple("colab_helpers.plotting", _in_kernel=lambda: True, _show_png=_fake_show_png)
        if notebook
        else contextlib.nullcontext()
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()), kernel:
        config = copy.copy(cfg)
        config.output_dir = tmp
        tuner = FineTuner(copy.deepcopy(base), tokenizer, texts, None, config, callbacks=[stamps], live_plot=live_plot)
        cpu, wall = time.process_time(), time.perf_counter()
        tuner.train()
        record["train_cpu_s"], record["train_wall_s"] = time.process_time() - cpu, time.perf_counter() - wall
    record["redraws"] = record["plot"].redraws if record["plot"] is not None else 0
    record["losses"] = stamps.losses
    steps = cfg.max_steps
    return (stamps.last[0] - stamps.begin[0]) / steps, (stamps.last[1] - stamps.begin[1]) / steps


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


def compare(
    key: str, plan: tuple[int, int, int, int], quick: bool, *, live_plot: bool, warmup: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Guarded vs plain (and, with ``live_plot``, live plot on vs off) on one model; return (checks, figures)."""
    from colab_helpers.data import load_text_dataset
    from colab_helpers.evaluation import tokenize_texts

    steps, micro, seq, repeats = plan
    base, tokenizer = build_model(key)
    texts = load_text_dataset("embedded").train[: TRAIN_PARAGRAPHS[quick]]
    token_ids = tokenize_texts(tokenizer, texts)
    cfg = _config(steps, micro, seq)
    plain_losses: list[float] = []
    records: dict[str, dict[str, Any]] = {"guarded": {}, "notebook_plot": {}}
    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "plain": lambda: plain_loop(base, token_ids, cfg, plain_losses),
        "guarded": lambda: guarded_run(base, tokenizer, texts, cfg, live_plot=False, notebook=False,
                                       record=records["guarded"]),
    }  # fmt: skip
    walls: dict[str, dict[str, list[float]]] = {"cpu": {"guarded": [], "notebook_plot": []},
                                                "wall": {"guarded": [], "notebook_plot": []}}  # fmt: skip
    if live_plot:
        variants["notebook_plot"] = lambda: guarded_run(
            base, tokenizer, texts, cfg, live_plot=True, notebook=True, record=records["notebook_plot"]
        )

    def keep_train_time(name: str) -> Callable[[], tuple[float, float]]:
        inner = variants[name]

        def call() -> tuple[float, float]:
            value = inner()
            walls["cpu"][name].append(records[name]["train_cpu_s"])
            walls["wall"][name].append(records[name]["train_wall_s"])
            return value

        return call

    for name in ("guarded", "notebook_plot"):
        if name in variants:
            variants[name] = keep_train_time(name)
    times = interleaved(variants, repeats, warmup=warmup)
    train = {clock: {n: v[-repeats:] for n, v in series.items()} for clock, series in walls.items()}  # no warm-up
    step_ratio = ratio(times, "guarded", "plain")
    diff = max(abs(a - b) for a, b in zip(plain_losses, records["guarded"]["losses"]))
    params = sum(p.numel() for p in base.parameters())
    label = f"{key} ({params / 1e6:.1f}M params, {micro} x {seq} tokens, {steps} steps)"
    checks = [
        check(
            f"guarded step vs plain peft + AdamW loop: {key}",
            f"<= {TARGET_STEP}x",
            step_ratio,
            step_ratio <= TARGET_STEP,
            f"{label}: plain {median(times, 'plain') * 1000:.0f} ms/step, guarded {median(times, 'guarded') * 1000:.0f} "
            f"ms/step (CPU); wall-clock ratio {ratio(times, 'guarded', 'plain', 'wall'):.3f}; per-step losses of the "
            f"two loops differ by <= {diff:.2g}",
        )
    ]
    figures: dict[str, Any] = {
        f"{key}_plain_step_cpu_s": median(times, "plain"),
        f"{key}_guarded_step_cpu_s": median(times, "guarded"),
        f"{key}_step_ratio": step_ratio,
        f"{key}_step_wall_ratio": ratio(times, "guarded", "plain", "wall"),
        f"{key}_loss_max_abs_diff": diff,
    }
    if live_plot:
        share = ratio(train, "notebook_plot", "guarded") - 1
        render = _median_render_seconds(records["notebook_plot"]["plot"], 1 if quick else 3)
        interval = max(cfg.plot_every_seconds, 10 * render)  # LivePlot waits >= 10x the last draw's time
        steady = render / interval
        checks.append(
            check(
                "live plot: train() time with live_plot=True vs False (notebook)",
                f"<= {TARGET_LIVE_PLOT:.0%} extra",
                share,
                share <= TARGET_LIVE_PLOT,
                f"{label}: train() {median(train, 'guarded'):.1f} s CPU without, {median(train, 'notebook_plot'):.1f} "
                f"s with ({records['notebook_plot']['redraws']} renders of {render:.2f} s each; wall-clock share "
                f"{ratio(train, 'notebook_plot', 'guarded', 'wall') - 1:.1%}); long runs tend to {steady:.1%} (one "
                f"render per {interval:.1f} s: plot_every_seconds={cfg.plot_every_seconds:g}, or 10x a render if "
                "longer)",
            )
        )
        figures.update(
            {
                "live_plot_share": share,
                "live_plot_render_s": render,
                "live_plot_steady_share": steady,
                "live_plot_redraws": records["notebook_plot"]["redraws"],
                "live_plot_wall_share": ratio(train, "notebook_plot", "guarded", "wall") - 1,
                "train_cpu_s_without_plot": median(train, "guarded"),
                "train_cpu_s_with_plot": median(train, "notebook_plot"),
                f"{key}_notebook_plot_step_ratio": ratio(times, "notebook_plot", "plain"),
            }
        )
    return checks, figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the fine-tuning benchmarks at one torch thread; return ``{"name", "checks", "figures", "settings"}``."""
    import torch

    plans = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    checks: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    try:
        for index, (key, plan) in enumerate(plans.items()):
            part_checks, part_figures = compare(key, plan, quick, live_plot=index == 0, warmup=index == 0 and not quick)
            checks += part_checks
            figures.update(part_figures)
    finally:
        torch.set_num_threads(threads)
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    cfg = _config(1, 1, 2)
    settings = {
        "models": ", ".join(f"{k}: {s} steps of {m} x {q} tokens, {r} repetitions" for k, (s, m, q, r) in plans.items()),
        "lora": f"r {cfg.r}, alpha {cfg.alpha:g}, dropout {cfg.dropout:g}, default targets (attention and MLP), fp32",
        "guarded run": "FineTuner(progress=True, a timing callback), no eval texts, checkpoint only at the end",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"name": "finetune", "checks": checks, "figures": figures, "settings": settings}


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: seconds, for smoke tests")
    result = run(quick=parser.parse_args().quick)
    for row in result["checks"]:
        status = "pass" if row["passed"] else "MISS"
        print(f"{status:4}  {row['name']}: {row['measured']} (target {row['target']}) - {row['detail']}")
    print(f"settings: {result['settings']}")


if __name__ == "__main__":
    _main()
