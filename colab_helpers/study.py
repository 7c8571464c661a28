"""Pruning studies: importance per strategy over seeds, and perplexity against pruning level.

The building blocks (``head_importance``, ``select_heads``, ``gate_heads``, ``perplexity``) do one thing each;
these functions run them over a grid so that a notebook cell is one call and a table comes back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

DATA_SAMPLED = frozenset({"entropy", "gradient"})  # strategies whose scores depend on which batches are read
SEEDED = frozenset({"random"}) | DATA_SAMPLED  # strategies worth repeating over seeds


def sample_batches(batches: Sequence[Any], count: int, seed: int) -> list[Any]:
    """Return ``count`` batches drawn without replacement from ``batches`` with ``seed`` (all when fewer)."""
    if count >= len(batches):
        return list(batches)
    return random.Random(seed).sample(list(batches), count)


def importance_by_strategy(
    model: Any,
    batches: Sequence[Any],
    strategies: Sequence[str],
    *,
    seeds: int = 1,
    batches_per_seed: int | None = None,
    progress: bool = True,
) -> dict[str, list["torch.Tensor"]]:
    """Return ``{strategy: [scores per seed]}``; deterministic strategies (``magnitude``) get one entry.

    ``random`` varies its draw with the seed; ``entropy`` and ``gradient`` score a different sample of
    ``batches_per_seed`` batches per seed (all batches when None, then one seed suffices).
    """
    from tqdm.auto import tqdm

    from .pruning import head_importance

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    plan = [
        (strategy, seed)
        for strategy in strategies
        for seed in range(seeds if strategy in SEEDED and (strategy == "random" or batches_per_seed) else 1)
    ]
    results: dict[str, list[torch.Tensor]] = {strategy: [] for strategy in strategies}
    for strategy, seed in tqdm(plan, desc="importance", disable=not progress):
        sample = sample_batches(batches, batches_per_seed or len(batches), seed)
        results[strategy].append(head_importance(model, sample, strategy, seed=seed, progress=False))
    return results


def mean_scores(scores_by_strategy: Mapping[str, Sequence["torch.Tensor"]]) -> dict[str, "torch.Tensor"]:
    """Return the mean score map per strategy (over seeds), for heatmaps and a single pruning choice."""
    import torch

    return {name: torch.stack(list(scores)).mean(dim=0) for name, scores in scores_by_strategy.items()}


def level_sweep(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    scores_by_strategy: Mapping[str, Sequence["torch.Tensor"]],
    levels: Sequence[float],
    *,
    scope: str = "global",
    seq_len: int = 128,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
) -> "pd.DataFrame":
    """Perplexity of ``model`` with each strategy's lowest-scored heads gated, at each level and seed.

    Returns one row per (strategy, seed, level): ``strategy, seed, level, heads_pruned, perplexity``.
    Level 0 is measured once and shared (every strategy prunes nothing there).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluation import perplexity
    from .pruning import gate_heads, select_heads

    for level in levels:
        if not 0 <= level < 1:
            raise ValueError(f"levels must be in [0, 1), got {level}; e.g. [0.0, 0.1, 0.3, 0.5, 0.7]")
    measure = dict(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, progress=False)
    unpruned = perplexity(model, tokenizer, texts, **measure).perplexity
    plan = [(name, seed, level) for name, runs in scores_by_strategy.items() for seed in range(len(runs)) for level in levels]
    rows = []
    for name, seed, level in tqdm(plan, desc="perplexity vs level", disable=not progress):
        mask = select_heads(scores_by_strategy[name][seed], level, scope=scope)
        if not mask.any():
            value = unpruned
        else:
            with gate_heads(model, mask):
                value = perplexity(model, tokenizer, texts, **measure).perplexity
        rows.append({"strategy": name, "seed": seed, "level": level, "heads_pruned": int(mask.sum()), "perplexity": value})
    return pd.DataFrame(rows)


def summarize_levels(table: "pd.DataFrame") -> "pd.DataFrame":
    """Return mean ± std of perplexity per strategy (rows) and level (columns), as readable strings."""
    stats = table.groupby(["strategy", "level"])["perplexity"].agg(["mean", "std", "count"]).reset_index()

    def cell(row: Any) -> str:
        return f"{row['mean']:.1f}" if row["count"] < 2 else f"{row['mean']:.1f} ± {row['std']:.1f}"

    stats["perplexity"] = stats.apply(cell, axis=1)
    wide = stats.pivot(index="strategy", columns="level", values="perplexity")
    wide.columns = [f"{level:.0%}" for level in wide.columns]
    return wide


@dataclass(frozen=True)
class SpeedReport:
    """Forward latency of one model at a fixed batch, in seconds (median of repeats)."""

    seconds: float
    batch_size: int
    seq_len: int

    @property
    def tokens_per_second(self) -> float:
        return self.batch_size * self.seq_len / self.seconds


def forward_latency(model: Any, *, batch_size: int = 4, seq_len: int = 128, repeats: int = 5, seed: int = 0) -> SpeedReport:
    """Return the median latency of a no-grad forward pass over random token ids (one warm-up pass first)."""
    import statistics

    import torch

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)
    times = []
    with torch.no_grad():
        for attempt in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if attempt:  # the first pass warms caches up
                times.append(time.perf_counter() - started)
    return SpeedReport(statistics.median(times), batch_size, seq_len)


def parameter_count(model: Any) -> int:
    """Return the number of distinct parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())


def directory_size(path: Any) -> int:
    """Return the total size in bytes of the files under ``path``."""
    from pathlib import Path

    return sum(item.stat().st_size for item in Path(path).rglob("*") if item.is_file())


def pruning_comparison(
    baseline: Any, gated: Any, removed: Any, report: Any, speed_before: SpeedReport, speed_after: SpeedReport
) -> "pd.DataFrame":
    """Return a table of the three stages (unpruned, gated, removed): perplexity, parameters, forward time.

    ``baseline``/``gated``/``removed`` are :class:`~colab_helpers.evaluation.PerplexityResult`; ``report`` is
    the :class:`~colab_helpers.pruning.PruneReport` of the removal; gating leaves size and speed unchanged.
    """
    import pandas as pd

    def row(stage: str, result: Any, params: int, speed: SpeedReport) -> dict[str, Any]:
        return {
            "stage": stage,
            "perplexity": round(result.perplexity, 2),
            "parameters": params,
            "forward ms": round(speed.seconds * 1000, 2),
            "speed-up": round(speed_before.seconds / speed.seconds, 2),
        }

    return pd.DataFrame(
        [
            row("unpruned", baseline, report.params_before, speed_before),
            row("gated (hooks)", gated, report.params_before, speed_before),
            row("heads removed", removed, report.params_after, speed_after),
        ]
    ).set_index("stage")
