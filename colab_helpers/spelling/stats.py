"""Statistics of the study, numpy only: bootstrap intervals of an accuracy, Pearson and Spearman correlations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..checks import check_integer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _check_boot(n_boot: int, confidence: float) -> None:
    check_integer(n_boot, "n_boot", fix="e.g. n_boot=1000")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; e.g. confidence=0.95")


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Return the percentile bootstrap interval of the mean of ``values``; ``(nan, nan)`` when empty."""
    import numpy as np

    _check_boot(n_boot, confidence)
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_with_ci(correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """Return ``{"accuracy", "ci_low", "ci_high", "n"}`` of a list of right/wrong answers (95% bootstrap)."""
    values = [1.0 if c else 0.0 for c in correct]
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    accuracy = sum(values) / len(values) if values else math.nan
    return {"accuracy": accuracy, "ci_low": low, "ci_high": high, "n": len(values)}


def paired_difference_ci(values: Sequence[float], reference: Sequence[float], *, n_boot: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> dict[str, float | int]:  # fmt: skip
    """Return ``{"difference", "ci_low", "ci_high", "n"}``: mean(values) - mean(reference) over paired items
    (the same questions answered by two models) with a percentile bootstrap interval that resamples the pairs.

    Pairing matters: two accuracies on the same 60 questions each have an interval of about ±10 points, yet
    their difference is known far better, since most questions are answered alike by both models.
    """
    import numpy as np

    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"values and reference must pair up one to one, got {a.size} and {b.size} items")
    low, high = bootstrap_ci(a - b, n_boot=n_boot, confidence=confidence, seed=seed)
    difference = float((a - b).mean()) if a.size else math.nan
    return {"difference": difference, "ci_low": low, "ci_high": high, "n": int(a.size)}


def rank(values: Sequence[float]) -> np.ndarray:
    """Return the 1-based ranks of ``values``, ties given their average rank (as Spearman's rho needs)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(data.size, dtype=float)
    ranks[order] = np.arange(1, data.size + 1)
    _, inverse, counts = np.unique(data, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Return Pearson's r of ``x`` and ``y``; NaN with fewer than 2 pairs or a constant input."""
    import numpy as np

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Return Spearman's rho: Pearson's r of the ranks (ties averaged)."""
    return pearson(rank(x), rank(y))


def correlation_with_ci(x: Sequence[float], y: Sequence[float], *, method: str = "pearson", n_boot: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, float | int]:  # fmt: skip
    """Return ``{"r", "ci_low", "ci_high", "n"}``: the correlation and its percentile bootstrap interval.

    Resamples of pairs whose correlation is undefined (a constant resample) are left out; with fewer than
    3 pairs the interval is NaN.
    """
    import numpy as np

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    _check_boot(n_boot, confidence)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    measure = pearson if method == "pearson" else spearman
    result: dict[str, float | int] = {"r": measure(a, b), "ci_low": math.nan, "ci_high": math.nan, "n": int(a.size)}
    if a.size < 3:
        return result
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, a.size, size=(n_boot, a.size))
    values = np.array([measure(a[i], b[i]) for i in samples])
    values = values[np.isfinite(values)]
    if values.size:
        tail = (1 - confidence) / 2 * 100
        result["ci_low"], result["ci_high"] = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return result
