"""Pruning studies: importance per strategy over seeds, and perplexity against pruning level.

:class:`PruningStudyConfig` holds a study's settings (notebook 03 builds one from its parameters).

The building blocks (``head_importance``, ``select_heads``, ``gate_heads``, ``perplexity``) do one thing each;
these functions run them over a grid so that a notebook cell is one call and a table comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..evaluation.latency import SpeedReport
from ..smoke import SMOKE_DATASET, SMOKE_EVAL_TOKENS, SMOKE_SEQ_LEN, smoke_model
from .gating import gate_heads
from .importance import STRATEGIES, check_strategy, head_importance, normalize_scores
from .selection import SCOPES, select_heads

if TYPE_CHECKING:
    import pandas as pd
    import torch

DATA_SAMPLED = frozenset({"entropy", "gradient"})  # strategies whose scores depend on which batches are read
SEEDED = frozenset({"random"}) | DATA_SAMPLED  # strategies worth repeating over seeds


@dataclass(frozen=True)
class PruningStudyConfig:
    """One pruning study: strategies compared over seeds, perplexity against level, one level applied."""

    model: str = "auto"  # catalog or hub name, local path, 'embedded-gpt2', or 'auto'
    dataset: str = "auto"  # 'auto', 'embedded' or a hub dataset
    strategies: tuple[str, ...] = STRATEGIES  # importance strategies to compare
    levels: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7)  # fractions of heads pruned for the curves
    seeds: int = 5  # repeats of random and data-sampled strategies
    level: float = 0.3  # the level applied and removed physically
    strategy: str = "gradient"  # the strategy that picks the heads at that level
    scope: str = "global"  # 'global' or 'layer'
    seq_len: int = 128  # tokens per sequence for scoring and perplexity
    eval_tokens: int = 20000  # validation tokens per perplexity
    prompt: str = "A hacker is"  # prompt for generations before / after

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.strategies:
            raise ValueError(f"strategies must name at least one of {', '.join(STRATEGIES)}, got none")
        for strategy in (*self.strategies, self.strategy):
            check_strategy(strategy)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        for name, value in (("level", self.level), *(("levels", level) for level in self.levels)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}; e.g. 0.3 for 30% of the heads")
        for name in ("seeds", "seq_len", "eval_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def smoke(self) -> PruningStudyConfig:
        """Return a copy that runs in seconds (:mod:`colab_helpers.smoke`): the embedded toy, two strategies
        (random and the chosen one), two levels, two seeds, few tokens."""
        return dataclasses.replace(
            self, model=smoke_model(self.model), dataset=SMOKE_DATASET,
            strategies=tuple(dict.fromkeys(("random", self.strategy))), levels=(0.0, self.level), seeds=2,
            seq_len=min(self.seq_len, SMOKE_SEQ_LEN), eval_tokens=SMOKE_EVAL_TOKENS,
        )  # fmt: skip

    @property
    def evaluate(self) -> dict[str, int]:
        """Keyword arguments of every perplexity measurement of the study."""
        return {"seq_len": self.seq_len, "max_tokens": self.eval_tokens}


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
    normalize: str = "none",
    progress: bool = True,
) -> dict[str, list["torch.Tensor"]]:
    """Return ``{strategy: [scores per seed]}``; deterministic strategies (``magnitude``) get one entry.

    ``random`` varies its draw with the seed; ``entropy`` and ``gradient`` score a different sample of
    ``batches_per_seed`` batches per seed (all batches when None, then one seed suffices). ``normalize`` goes to
    ``head_importance`` (``"none"``: raw scores; rescale them afterwards with :func:`renormalize`).
    """
    from tqdm.auto import tqdm

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
        results[strategy].append(
            head_importance(model, sample, strategy, seed=seed, normalize=normalize, progress=False)
        )
    return results


def renormalize(
    scores_by_strategy: Mapping[str, Sequence["torch.Tensor"]], normalize: str
) -> dict[str, list["torch.Tensor"]]:
    """Return raw scores (``importance_by_strategy(..., normalize="none")``) normalised per layer by ``normalize``
    (:func:`~.importance.normalize_scores`), so one scoring pass can be compared raw and normalised."""
    return {name: [normalize_scores(scores, normalize) for scores in runs] for name, runs in scores_by_strategy.items()}


class GatedPerplexity:
    """Perplexity of ``model`` on fixed texts with a head mask gated; each distinct mask is measured once.

    ``parts`` > 1 splits ``texts`` into that many consecutive groups of about equal length and scores
    ``max_tokens // parts`` tokens of each: the result has the perplexity of every part (how stable a figure
    is) and of all of them together (``exp`` of the token-weighted mean log-likelihood). ``on_result`` is called
    with each new result (e.g. to print progress from a script).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        texts: Sequence[str],
        *,
        seq_len: int = 128,
        stride: int | None = None,
        batch_size: int = 8,
        max_tokens: int | None = None,
        parts: int = 1,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if parts < 1 or parts > len(texts):
            raise ValueError(f"parts must be in [1, {len(texts)}] (one text per part at least), got {parts}")
        self.model, self.tokenizer = model, tokenizer
        self.groups = _split_texts(list(texts), parts)
        self.options = dict(seq_len=seq_len, stride=stride, batch_size=batch_size, progress=False,
                            max_tokens=None if max_tokens is None else max_tokens // parts)  # fmt: skip
        self.on_result = on_result
        self.measured = 0
        self._cache: dict[bytes, dict[str, Any]] = {}

    def __call__(self, mask: "torch.Tensor | None" = None) -> dict[str, Any]:
        """Return ``{"perplexity", "tokens", "parts": [perplexity per part], "seconds", "cached"}`` for ``mask``."""
        from ..evaluation.perplexity import perplexity

        key = b""  # nothing pruned: the unpruned model
        if mask is not None and bool(mask.any()):
            key = mask.detach().cpu().numpy().tobytes() + repr(tuple(mask.shape)).encode()
        if key in self._cache:
            return {**self._cache[key], "cached": True}
        started = time.perf_counter()
        with gate_heads(self.model, mask) if key else contextlib.nullcontext():
            results = [perplexity(self.model, self.tokenizer, group, **self.options) for group in self.groups]
        tokens = sum(r.tokens for r in results)
        result = {
            "perplexity": math.exp(sum(r.nll * r.tokens for r in results) / tokens),
            "tokens": tokens,
            "parts": [r.perplexity for r in results],
            "heads_pruned": 0 if not key else int(mask.sum()),
            "seconds": time.perf_counter() - started,
        }
        self._cache[key] = result
        self.measured += 1
        if self.on_result is not None:
            self.on_result(result)
        return {**result, "cached": False}


def _split_texts(texts: list[str], parts: int) -> list[list[str]]:
    """Cut ``texts`` into ``parts`` consecutive groups of about equal total length (characters); none empty."""
    total = sum(len(text) for text in texts) or 1
    groups: list[list[str]] = [[] for _ in range(parts)]
    seen = 0
    for text in texts:
        groups[min(parts - 1, seen * parts // total)].append(text)
        seen += len(text)
    return [group for group in groups if group]


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
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    measure: GatedPerplexity | None = None,
    progress: bool = True,
) -> "pd.DataFrame":
    """Perplexity of ``model`` with each strategy's lowest-scored heads gated, at each level and seed.

    Returns one row per (strategy, seed, level): ``strategy, seed, level, heads_pruned, perplexity``, plus
    ``perplexity_part1``, ... when ``measure`` splits the text into parts. Level 0 is measured once and shared
    (every strategy prunes nothing there). Pass a :class:`GatedPerplexity` as ``measure`` to share its cache
    over several sweeps (then ``texts``, ``seq_len``, ``stride``, ``batch_size``, ``max_tokens`` are its own).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    for level in levels:
        if not 0 <= level < 1:
            raise ValueError(f"levels must be in [0, 1), got {level}; e.g. [0.0, 0.1, 0.3, 0.5, 0.7]")
    if measure is None:
        measure = GatedPerplexity(model, tokenizer, texts, seq_len=seq_len, stride=stride, batch_size=batch_size,
                                  max_tokens=max_tokens)  # fmt: skip
    plan = [(name, seed, level) for name, runs in scores_by_strategy.items() for seed in range(len(runs)) for level in levels]
    rows = []
    for name, seed, level in tqdm(plan, desc="perplexity vs level", disable=not progress):
        mask = select_heads(scores_by_strategy[name][seed], level, scope=scope)
        result = measure(mask)
        row = {"strategy": name, "seed": seed, "level": level, "heads_pruned": int(mask.sum()),
               "perplexity": result["perplexity"]}  # fmt: skip
        if len(result["parts"]) > 1:
            row.update({f"perplexity_part{i + 1}": value for i, value in enumerate(result["parts"])})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_levels(table: "pd.DataFrame", *, stat: str = "mean", by: str = "strategy") -> "pd.DataFrame":
    """Return perplexity per ``by`` value (rows) and level (columns), as readable strings.

    ``stat="mean"``: mean ± std over repeated runs; ``stat="median"``: median (min-max), which a few wild runs
    (random pruning at high levels) do not drag around. A single run shows its value alone.
    """
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    columns = ["mean", "median", "std", "min", "max", "count"]
    stats = table.groupby([by, "level"])["perplexity"].agg(columns).reset_index()

    def cell(row: Any) -> str:
        value = f"{row[stat]:,.1f}"
        if row["count"] < 2:
            return value
        return f"{value} ± {row['std']:,.1f}" if stat == "mean" else f"{value} ({row['min']:,.1f}-{row['max']:,.1f})"

    stats["perplexity"] = stats.apply(cell, axis=1)
    wide = stats.pivot(index=by, columns="level", values="perplexity")
    wide.columns = [f"{level:.0%}" for level in wide.columns]
    return wide


def directory_size(path: Any) -> int:
    """Return the total size in bytes of the files under ``path``."""
    from pathlib import Path

    return sum(item.stat().st_size for item in Path(path).rglob("*") if item.is_file())


def pruning_comparison(
    baseline: Any, gated: Any, removed: Any, report: Any, speed_before: SpeedReport, speed_after: SpeedReport
) -> "pd.DataFrame":
    """Return a table of the three stages (unpruned, gated, removed): perplexity, parameters, forward time.

    ``baseline``/``gated``/``removed`` are :class:`~colab_helpers.evaluation.perplexity.PerplexityResult`; ``report`` is
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
