#!/usr/bin/env python
"""Pruning quality on a real model: perplexity with heads gated, per importance strategy, level, scope and
score normalisation.

On ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct, Q4_1 GGUF, dequantized): heads are scored once per strategy
on the embedded training text (random over ``--random-seeds`` seeds; magnitude, entropy and gradient are
deterministic given the batches), then the lowest-scored heads are gated at each level and the perplexity of a
fixed slice of the embedded validation text is measured. Compared: global scope with raw scores (the package
default, ``head_importance(..., normalize="none")``), layer scope, and every normalisation per strategy at every
level (global scope). The headline table, the goal checks and the stability table are at ``--headline-level``.

Each perplexity is measured on two disjoint halves of the evaluation slice (``--parts``) and reported for both
halves and for the whole, so the doc can say how stable a figure is. A mask met twice is measured once.

Writes the tables, the figure (``docs/pruning-results.png``), the exact command and the date into
``docs/pruning-results.md``, between generated-section markers: prose outside them (the verdict) is kept when
the study is run again.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/pruning_study.py   # 55 perplexity passes: 17-25 min at one thread
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/pruning_study.py --eval-tokens 512 --levels 0.3 --no-write  # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _docs import END, REPO_ROOT, START, write_doc  # scripts/_docs.py, beside this file: offline settings first

DOC = REPO_ROOT / "docs" / "pruning-results.md"
FIGURE = REPO_ROOT / "docs" / "pruning-results.png"
MODEL = "smollm2-135m-instruct"
MODEL_NOTE = "SmolLM2-135M-Instruct, Q4_1 GGUF, dequantized to float32"
STRATEGIES = ("random", "magnitude", "entropy", "gradient")
LEVELS = (0.1, 0.3, 0.5)
COMPARE = ("none", "l2", "zscore")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Perplexity with heads gated per strategy, level, scope, normalisation.")
    parser.add_argument("--model", default=MODEL, help="catalog name of the model to study")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS), help="fractions of heads pruned")
    parser.add_argument("--random-seeds", type=int, default=3, help="draws of the random strategy")
    parser.add_argument("--importance-batches", type=int, default=8, help="training batches read by entropy / gradient")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (importance and perplexity)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (importance and perplexity)")
    parser.add_argument("--eval-tokens", type=int, default=4096,
                        help="validation tokens per perplexity, split over --parts (a pass of 4096 is ~15-35 s)")  # fmt: skip
    parser.add_argument("--parts", type=int, default=2, help="disjoint parts of the validation text, each reported")
    parser.add_argument("--headline-level", type=float, default=0.3, help="level of the headline and goal checks")
    parser.add_argument("--compare", nargs="+", default=list(COMPARE), choices=COMPARE,
                        help="normalisations compared per strategy (global scope, every level)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: shared machines thrash with more)")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--no-write", action="store_true", help="print the tables, write nothing")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    """Score heads, run every sweep; return the long table (one row per measurement) and facts for the doc."""
    import pandas as pd

    from colab_helpers.evaluation.data import load_text_dataset
    from colab_helpers.evaluation.perplexity import lm_batches, tokenize_texts
    from colab_helpers.models.loading import load_model
    from colab_helpers.pruning import head_layout
    from colab_helpers.pruning.study import GatedPerplexity, importance_by_strategy, level_sweep, renormalize

    model, tokenizer = load_model(args.model, device="cpu")
    log(f"loaded {args.model}: {head_layout(model).summary()}")
    data = load_text_dataset("embedded")
    train_ids = tokenize_texts(tokenizer, data.train, max_tokens=args.importance_batches * args.batch_size * args.seq_len)
    batches = lm_batches(train_ids, seq_len=args.seq_len, batch_size=args.batch_size, max_batches=args.importance_batches)

    raw: dict[str, list[Any]] = {}
    importance_s: dict[str, float] = {}
    for strategy in args.strategies:
        started = time.perf_counter()
        raw.update(importance_by_strategy(model, batches, [strategy], seeds=args.random_seeds, normalize="none",
                                          progress=False))  # fmt: skip
        importance_s[strategy] = time.perf_counter() - started
        log(f"importance {strategy}: {len(raw[strategy])} run(s), {importance_s[strategy]:.0f} s")

    def report(result: dict[str, Any]) -> None:
        halves = " / ".join(f"{p:,.1f}" for p in result["parts"])
        log(f"  measured {measure.measured}: {result['heads_pruned']} heads gated -> perplexity "
            f"{result['perplexity']:,.1f} (parts {halves}), {result['seconds']:.0f} s")  # fmt: skip

    measure = GatedPerplexity(model, tokenizer, data.validation, seq_len=args.seq_len, stride=args.seq_len,
                              batch_size=args.batch_size, max_tokens=args.eval_tokens, parts=args.parts,
                              on_result=report)  # fmt: skip
    unpruned = measure()
    tables = []

    def sweep(label: str, scores: dict[str, list[Any]], levels: list[float], scope: str, normalize: str) -> None:
        if not scores:
            return
        log(f"sweep: {label} ({sum(map(len, scores.values())) * len(levels)} cells)")
        table = level_sweep(model, tokenizer, data.validation, scores, levels, scope=scope, measure=measure,
                            progress=False)  # fmt: skip
        table.insert(0, "scope", scope)
        table.insert(1, "normalize", normalize)
        tables.append(table)

    levels = list(args.levels)
    sweep("global scope, raw scores", raw, levels, "global", "none")
    sweep("layer scope (normalisation cannot change a per-layer ranking)", raw, levels, "layer", "none")
    scored = {s: runs for s, runs in raw.items() if s != "random"}
    for method in args.compare:  # raw scores are measured above
        missing = scored if method != "none" else {}
        sweep(f"global scope, {method} scores", renormalize(missing, method), levels, "global", method)
    table = pd.concat(tables, ignore_index=True)
    table = table.drop_duplicates(subset=["scope", "normalize", "strategy", "seed", "level"])
    return {
        "table": table,
        "unpruned": unpruned,
        "layout": head_layout(model).summary(),
        "train_tokens": train_ids.numel(),
        "batches": len(batches),
        "importance_s": importance_s,
        "measured": measure.measured,
        "groups": [len(group) for group in measure.groups],
    }


def markdown_table(frame: Any, index_name: str) -> str:
    """Return a pandas DataFrame as a GitHub markdown table (no ``tabulate`` needed)."""
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(frame.columns)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def median_cell(values: Any) -> str:
    """One value, or the median with the min-max range of several (random's seeds)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def select(table: Any, **where: Any) -> Any:
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows


def median_of(table: Any, **where: Any) -> float:
    return float(select(table, **where)["perplexity"].median())


def headline(result: dict[str, Any], level: float) -> Any:
    """Rows: strategy; columns: global scope (raw scores), layer scope; at ``level``."""
    import pandas as pd

    table = result["table"]
    rows = {}
    for strategy in table["strategy"].unique():
        raw = select(table, scope="global", normalize="none", strategy=strategy, level=level)["perplexity"]
        layer = select(table, scope="layer", strategy=strategy, level=level)
        rows[f"`{strategy}`"] = {
            "global, raw": median_cell(raw),
            "layer scope": f"{median_cell(layer['perplexity'])} [{int(layer['heads_pruned'].iloc[0])} heads]",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def by_level(result: dict[str, Any], scope: str) -> Any:
    """Rows: strategy (raw scores); columns: levels; random as median (min-max)."""
    import pandas as pd

    table = result["table"]
    rows = {}
    for strategy in table["strategy"].unique():
        picked = select(table, scope=scope, normalize="none", strategy=strategy)
        rows[f"`{strategy}`"] = {f"{level:.0%} [{int(g['heads_pruned'].iloc[0])}]": median_cell(g["perplexity"])
                      for level, g in picked.groupby("level")}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def comparison(result: dict[str, Any], methods: list[str]) -> Any:
    """Rows: (scored strategy, normalisation), then random; columns: levels (global scope); the default in bold."""
    import pandas as pd

    table = select(result["table"], scope="global")
    rows = {}
    for strategy in [s for s in table["strategy"].unique() if s != "random"]:
        for method in methods:
            picked = select(table, strategy=strategy, normalize=method)
            bold = "**" if method == "none" else ""
            rows[f"{bold}`{strategy}`, `{method}`{bold}"] = {
                f"{level:.0%} [{int(g['heads_pruned'].iloc[0])}]": f"{bold}{median_cell(g['perplexity'])}{bold}"
                for level, g in picked.groupby("level")
            }
    random = select(table, strategy="random", normalize="none")
    rows["`random` (reference)"] = {f"{level:.0%} [{int(g['heads_pruned'].iloc[0])}]": median_cell(g["perplexity"])
                                    for level, g in random.groupby("level")}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def stability(result: dict[str, Any], level: float) -> Any:
    """Rows: the headline measurements at ``level``; columns: perplexity on each part and their ratio."""
    import pandas as pd

    table = result["table"]
    parts = [c for c in table.columns if c.startswith("perplexity_part")]
    rows = {"unpruned": {**{f"part {i + 1}": fmt(v) for i, v in enumerate(result["unpruned"]["parts"])}}}
    for _, row in select(table, level=level).iterrows():
        if row["scope"] == "global" and row["normalize"] != "none":
            continue
        name = f"{row['strategy']}" + (f" seed {row['seed']}" if row["strategy"] == "random" else "") + \
               f", {row['scope']}" + (f" ({row['normalize']})" if row["normalize"] != "none" else "")
        rows[name] = {f"part {i + 1}": fmt(row[c]) for i, c in enumerate(parts)}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if len(parts) == 2:
        values = [[float(str(v).replace(",", "")) for v in r] for r in frame[["part 1", "part 2"]].values]
        frame["part 2 / part 1"] = [f"{b / a:.2f}" for a, b in values]
    return frame


def goals(result: dict[str, Any], level: float) -> list[str]:
    """Check the issue's goals at ``level``, global scope with raw scores (the default)."""
    table, base = result["table"], result["unpruned"]["perplexity"]
    random = median_of(table, scope="global", normalize="none", strategy="random", level=level)
    lines = []
    best = None
    for strategy in [s for s in table["strategy"].unique() if s != "random"]:
        value = median_of(table, scope="global", normalize="none", strategy=strategy, level=level)
        verdict = "better than" if value < random else "WORSE than"
        lines.append(f"- `{strategy}`: {fmt(value)}, {verdict} the random median {fmt(random)}")
        best = min(best or (value, strategy), (value, strategy))
    if best:
        ratio = best[0] / base
        ok = "within" if ratio <= 1.5 else "OUTSIDE"
        lines.append(f"- best `{best[1]}`: {fmt(best[0])} = {ratio:.2f}x the unpruned {fmt(base)} ({ok} the 1.5x goal)")
    return lines


def figure(result: dict[str, Any], path: Path) -> Path:
    """Two panels, log y: global scope and layer scope (raw scores); random's range shaded."""
    from colab_helpers.plots.pruning import new_figure, plain_log_axis

    table = result["table"]
    colours = {"random": "tab:grey", "magnitude": "tab:blue", "entropy": "tab:orange", "gradient": "tab:green"}
    fig = new_figure(11.0, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    panels = [("global", "global scope (one ranking over all layers)"), ("layer", "layer scope (same share per layer)")]
    for ax, (scope, title) in zip(axes, panels, strict=True):
        for strategy in table["strategy"].unique():
            for method, style, label in [("none", "-", strategy)]:
                rows = select(table, scope=scope, normalize=method, strategy=strategy)
                stats = rows.groupby("level")["perplexity"].agg(["median", "min", "max"]).sort_index()
                x = stats.index * 100
                ax.plot(x, stats["median"], style, marker="o", markersize=4, color=colours.get(strategy),
                        label=label + (" (median, range of seeds)" if strategy == "random" else ""))  # fmt: skip
                if strategy == "random":
                    ax.fill_between(x, stats["min"], stats["max"], color=colours["random"], alpha=0.2, linewidth=0)
        ax.axhline(result["unpruned"]["perplexity"], color="black", linestyle=":", linewidth=1, label="unpruned")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("heads gated (% of the model's 270)")
        ax.set_xticks(sorted(100 * level for level in table["level"].unique()))
        ax.grid(True, which="both", alpha=0.3)
        plain_log_axis(ax)
    axes[0].set_ylabel("validation perplexity (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels: inside, it hides points
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small", frameon=False)
    fig.suptitle(f"{MODEL_NOTE}: perplexity with heads gated", fontsize="medium")
    fig.save(path)
    return path


def generated_section(result: dict[str, Any], args: argparse.Namespace, command: str, seconds: float) -> str:
    """Return the generated part of the doc: settings, tables, goal checks, the figure, provenance."""
    import torch
    import transformers

    level = args.headline_level
    base = result["unpruned"]
    tokens = base["tokens"]
    importance = ", ".join(f"{s} {t:.0f} s" for s, t in result["importance_s"].items())
    lines = [
        START,
        "<!-- written by scripts/pruning_study.py: edit the prose outside these markers, not inside -->",
        "",
        f"Command: `{command}`  ",
        (
            f"Date (UTC): {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')}; {seconds / 60:.1f} min at "
            f"{args.threads} torch thread(s) on {os.cpu_count()} shared CPUs; {result['measured']} perplexity passes; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}."
        ),
        "",
        "Settings:",
        "",
        f"- model: `{args.model}` ({MODEL_NOTE}); {result['layout']}.",
        (
            f"- importance: {result['batches']} training batches of {args.batch_size} x {args.seq_len} tokens "
            f"({result['train_tokens']:,} tokens, the start of the embedded training split); `random` over "
            f"{args.random_seeds} seeds, the others once (deterministic given the batches). Time: {importance}."
        ),
        (
            f"- perplexity: {tokens:,} scored tokens of the embedded validation split, in {len(base['parts'])} "
            f"disjoint parts (the split's {' and '.join(map(str, result['groups']))} texts, cut in two by length; "
            f"the first {args.eval_tokens // args.parts:,} tokens of each), non-overlapping windows of {args.seq_len} "
            "tokens (stride = window), heads gated (their output multiplied by zero), nothing removed or fine-tuned."
        ),
        (
            "- scopes: **global** ranks all heads together (at least one head left per layer); **layer** prunes the "
            "same share of every layer, rounded per layer, so its head count differs (in brackets)."
        ),
        "- scores: raw (`head_importance`'s default, `normalize=\"none\"`) unless a table says otherwise.",
        "- random: median over seeds, (min-max) in brackets.",
        "",
        f"Unpruned perplexity: **{fmt(base['perplexity'])}** (parts: {' / '.join(fmt(p) for p in base['parts'])}).",
        "",
        f"### {level:.0%} of the heads, per strategy",
        "",
        markdown_table(headline(result, level), "strategy"),
        "",
        f"Goals at {level:.0%}, global scope, raw scores:",
        "",
        *goals(result, level),
        "",
        "### Global scope by level: raw scores",
        "",
        "Columns: level [heads gated].",
        "",
        markdown_table(by_level(result, "global"), "strategy"),
        "",
        "### Layer scope by level",
        "",
        markdown_table(by_level(result, "layer"), "strategy"),
        "",
        "### Which normalisation, per strategy (global scope)",
        "",
        "The bold row is the default (`none`: raw scores). Columns: level [heads gated].",
        "",
        markdown_table(comparison(result, list(args.compare)), "strategy, normalisation"),
        "",
        f"### Stability: the same masks on the two halves of the text ({level:.0%})",
        "",
        markdown_table(stability(result, level), "measurement"),
        "",
        f"![Perplexity against the share of heads gated]({args.figure.name})",
        "",
        END,
    ]
    return "\n".join(lines)


_TEMPLATE = """# Pruning quality on a real model: which heads to prune

Rerun with `scripts/pruning_study.py`; the section between the markers below is regenerated, the rest is
written by hand.

{generated}

## Verdict

(written by hand after reading the tables above)
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python scripts/pruning_study.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    started = time.perf_counter()
    result = run_study(args)
    seconds = time.perf_counter() - started
    for title, frame in [(f"{args.headline_level:.0%}", headline(result, args.headline_level)),
                         ("global, raw", by_level(result, "global")),
                         ("normalisations", comparison(result, list(args.compare)))]:  # fmt: skip
        print(f"\n{title}\n{frame.to_string()}")
    print("\n".join(goals(result, args.headline_level)), flush=True)
    if args.no_write:
        return 0
    figure(result, args.figure)
    write_doc(args.output, generated_section(result, args, command.strip(), seconds), _TEMPLATE)
    log(f"wrote {args.output} and {args.figure} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
