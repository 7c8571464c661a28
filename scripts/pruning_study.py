#!/usr/bin/env python
"""Pruning quality study on the embedded models: perplexity against pruning level, per importance strategy.

For each model (``embedded-gpt2``, ``embedded-llama``) and each strategy (random, magnitude, entropy, gradient),
heads are scored (``colab_helpers.study.importance_by_strategy``), the lowest-scored ones gated off over the
whole model (global scope) at each level, and validation perplexity measured (``level_sweep``). Strategies that
depend on a seed or on data are repeated over ``--seeds`` seeds: ``random`` draws new scores, ``entropy`` and
``gradient`` each read a different sample of ``--batches-per-seed`` training batches; ``magnitude`` needs no
data and no seed (one run).

Writes the tables, the figure (``docs/pruning-results.png``), the exact command and the date into
``docs/pruning-results.md``, between generated-section markers: prose outside them (the discussion) is kept
when the study is run again.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/pruning_study.py            # ~6-8 min at one thread
    .venv/bin/python scripts/pruning_study.py --seeds 2 --eval-tokens 2000 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DOC = REPO_ROOT / "docs" / "pruning-results.md"
FIGURE = REPO_ROOT / "docs" / "pruning-results.png"
START, END = "<!-- generated:start -->", "<!-- generated:end -->"
MODELS = ("embedded-gpt2", "embedded-llama")
STRATEGIES = ("random", "magnitude", "entropy", "gradient")
LEVELS = (0.0, 0.1, 0.3, 0.5, 0.7)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Perplexity against pruning level per strategy, embedded models.")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="models to study (default: both embedded)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS), help="fractions of heads pruned")
    parser.add_argument("--seeds", type=int, default=5, help="repetitions of random / data-sampled strategies")
    parser.add_argument("--batches-per-seed", type=int, default=16,
                        help="training batches each seed of entropy / gradient reads (sampled per seed)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per importance batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (importance and perplexity)")
    parser.add_argument("--train-tokens", type=int, default=None,
                        help="training tokens the per-seed batch samples are drawn from (default: all)")  # fmt: skip
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="validation tokens scored per perplexity (default: all, about 24,600)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: shared machines thrash with more)")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--no-write", action="store_true", help="print the tables, write nothing")
    return parser.parse_args(argv)


def study_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Score heads with every strategy and sweep the levels on ``name``; return tables and facts for the doc."""
    from colab_helpers.data import load_text_dataset
    from colab_helpers.evaluation import lm_batches, tokenize_texts
    from colab_helpers.models import load_model
    from colab_helpers.pruning import head_layout
    from colab_helpers.study import importance_by_strategy, level_sweep

    started = time.perf_counter()
    model, tokenizer = load_model(name, device="cpu")
    data = load_text_dataset("embedded")
    train_ids = tokenize_texts(tokenizer, data.train, max_tokens=args.train_tokens)
    batches = lm_batches(train_ids, seq_len=args.seq_len, batch_size=args.batch_size)
    eval_tokens = tokenize_texts(tokenizer, data.validation, max_tokens=args.eval_tokens).numel()
    scores = importance_by_strategy(
        model, batches, args.strategies, seeds=args.seeds, batches_per_seed=args.batches_per_seed, progress=False
    )
    scored = time.perf_counter()
    table = level_sweep(
        model, tokenizer, data.validation, scores, args.levels, scope="global", seq_len=args.seq_len,
        batch_size=16, max_tokens=args.eval_tokens, progress=False,
    )  # fmt: skip
    unpruned = float(table.loc[table["level"] == 0, "perplexity"].iloc[0]) if 0 in args.levels else math.nan
    table.insert(0, "model", name)
    return {
        "name": name,
        "layout": head_layout(model).summary(),
        "table": table,
        "unpruned": unpruned,
        "train_batches": len(batches),
        "train_tokens": train_ids.numel(),
        "eval_tokens": eval_tokens,
        "importance_s": scored - started,
        "sweep_s": time.perf_counter() - scored,
    }


def markdown_table(frame: Any, index_name: str) -> str:
    """Return a pandas DataFrame as a GitHub markdown table (no ``tabulate`` needed)."""
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(frame.columns)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([f"`{index}`", *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def level_stats(table: Any) -> Any:
    """Return mean, std, min, max and count of perplexity per (strategy, level)."""
    return table.groupby(["strategy", "level"])["perplexity"].agg(["mean", "std", "min", "max", "count"])


def facts(result: dict[str, Any], levels: list[float]) -> list[str]:
    """Return data-driven lines: the best strategy per level, and gradient against random at 30%."""
    stats = level_stats(result["table"])
    lines = []
    for level in levels:
        if level == 0:
            continue
        at = stats.xs(level, level="level")["mean"].sort_values()
        ranking = ", ".join(f"{name} {value:.1f}" for name, value in at.items())
        lines.append(f"- {level:.0%}: best **{at.index[0]}** (mean perplexity: {ranking})")
    if 0.3 in levels and {"gradient", "random"} <= set(result["table"]["strategy"]):
        g, r = stats.loc[("gradient", 0.3)], stats.loc[("random", 0.3)]
        random_runs = result["table"].query("strategy == 'random' and level == 0.3")["perplexity"]
        beaten = int((random_runs > g["max"]).sum())
        verdict = "beats" if g["mean"] < r["mean"] else "does not beat"
        lines.append(
            f"- gradient {verdict} random at 30%: {g['mean']:.1f} ± {_std(g['std'])} vs {r['mean']:.1f} ± "
            f"{_std(r['std'])}; the worst gradient seed ({g['max']:.1f}) is below {beaten} of {len(random_runs)} "
            f"random seeds (best random seed {r['min']:.1f})"
        )
    return lines


def _std(value: float) -> str:
    return "0.0" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def figure(results: list[dict[str, Any]], path: Path) -> Path:
    """Draw one panel per model (``plot_level_curves``) and save the PNG; return its path."""
    from colab_helpers.figures import new_figure, plot_level_curves

    fig = new_figure(6.0 * len(results), 4.0)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results, strict=True):
        plot_level_curves(result["table"], baseline=result["unpruned"], ax=ax,
                          title=f"{result['name']}: validation perplexity (global scope)")  # fmt: skip
    fig.save(path)
    return path


def generated_section(results: list[dict[str, Any]], args: argparse.Namespace, command: str, seconds: float) -> str:
    """Return the generated part of the doc: settings, per-model tables and facts, the figure, provenance."""
    import torch
    import transformers

    from colab_helpers.study import summarize_levels

    counts = {s: (args.seeds if s != "magnitude" else 1) for s in args.strategies}
    first = results[0]  # both embedded models share one tokenizer: the same token counts
    train_pool = f"{first['train_batches']} batches ({first['train_tokens']:,} tokens)"
    eval_pool = f"{'all' if args.eval_tokens is None else 'the first'} {first['eval_tokens']:,} tokens"
    lines = [
        START,
        "<!-- written by scripts/pruning_study.py: edit the prose outside these markers, not inside -->",
        "",
        f"Command: `{command}`  ",
        (
            f"Date (UTC): {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')}; {seconds / 60:.1f} min at "
            f"{args.threads} torch thread(s) on {os.cpu_count()} CPUs; torch {torch.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}."
        ),
        "",
        "Settings:",
        "",
        (
            f"- levels {', '.join(f'{x:.0%}' for x in args.levels)} of all heads, **global** scope (lowest scores "
            "first over the whole model, at least one head left per layer); heads are gated (exact zero of their "
            "output)."
        ),
        (
            f"- runs per strategy: {', '.join(f'{s} {n}' for s, n in counts.items())}. `random`: a new draw per "
            f"seed; `entropy` and `gradient`: per seed a different sample of {args.batches_per_seed} training "
            f"batches of {args.batch_size} x {args.seq_len} tokens, drawn from {train_pool} (the training split "
            "tokenised into one stream cut into blocks); `magnitude`: deterministic, one run."
        ),
        (
            f"- perplexity: {eval_pool} of the embedded validation split, windows of {args.seq_len} tokens moved by "
            f"{args.seq_len // 2} (each token scored once, with up to {args.seq_len // 2} tokens of context; the "
            "model card's ~155 uses non-overlapping 128-token blocks, hence slightly different unpruned values)."
        ),
        "- cells: mean ± standard deviation over the runs (a single value where there is one run).",
        "",
    ]
    for result in results:
        summary = summarize_levels(result["table"])
        lines += [
            f"### {result['name']}",
            "",
            (
                f"{result['layout']}; unpruned perplexity **{result['unpruned']:.1f}**. Importance took "
                f"{result['importance_s']:.0f} s, the level sweep {result['sweep_s']:.0f} s."
            ),
            "",
            markdown_table(summary, "strategy"),
            "",
            "Best strategy per level (lowest mean perplexity):",
            "",
            *facts(result, args.levels),
            "",
        ]
    lines += [f"![Perplexity against pruning level]({args.figure.name})", "", END]
    return "\n".join(lines)


_TEMPLATE = """# Pruning quality: which heads to prune

How much perplexity each head-importance strategy costs at each pruning level, on the two embedded toy models.
Rerun with `scripts/pruning_study.py`; the section between the markers below is regenerated, the rest is
written by hand.

{generated}

## Verdict

(written by hand after reading the tables above)
"""


def write_doc(path: Path, generated: str) -> Path:
    """Replace the generated section of ``path`` (or create it from a template); return the path."""
    from colab_helpers._io import atomic_write_text

    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            return atomic_write_text(path, head + generated + tail)
    return atomic_write_text(path, _TEMPLATE.format(generated=generated))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python scripts/pruning_study.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    started = time.perf_counter()
    results = []
    for name in args.models:
        print(f"--- {name} ...", flush=True)
        result = study_model(name, args)
        results.append(result)
        stats = level_stats(result["table"])
        print(stats.round(2).to_string())
        print("\n".join(facts(result, args.levels)), flush=True)
    seconds = time.perf_counter() - started
    if args.no_write:
        return 0
    figure(results, args.figure)
    write_doc(args.output, generated_section(results, args, command.strip(), seconds))
    print(f"wrote {args.output} and {args.figure} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
