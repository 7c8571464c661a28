"""Analysis of a sweep: tables of runs, correlations of spelling with transfer, parameter effects, :func:`analyze`.

Tables are pandas DataFrames; :func:`analyze` gathers them into a :class:`~.report.TransferAnalysis` (figures,
HTML and Markdown report) with plain-language caveats (too few runs, intervals spanning zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..tasks.spelling import TASKS
from .config import METRICS, MIN_SPELLING_GAIN, SEARCH_SPACE, TRANSFER_TASKS
from .report import TransferAnalysis, _finite
from .stats import correlation_with_ci

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def accuracy_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return accuracy, 95% interval and number of questions per task from flat ``<task>_accuracy``... metrics."""
    import pandas as pd

    rows = [{"task": task, **{key: metrics.get(f"{task}_{key}") for key in ("accuracy", "ci_low", "ci_high", "n")}}
            for task in TASKS if f"{task}_accuracy" in metrics]  # fmt: skip
    return pd.DataFrame(rows).set_index("task")


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the runs table reduced to what a person reads: swept settings, accuracies, gains, status,
    best transfer first."""
    columns = ["run_id", "status", *SEARCH_SPACE, *METRICS, "position_gain", "count_gain", "position_gain_vs_control",
               "count_gain_vs_control", "position_transfer_ratio", "count_transfer_ratio", "train_steps",
               "stopped_reason", "error"]  # fmt: skip
    shown = runs[[c for c in columns if c in runs]]
    if "transfer_accuracy" in shown:
        shown = shown.sort_values("transfer_accuracy", ascending=False, na_position="last")
    return shown.reset_index(drop=True)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the ``done`` runs that have all three accuracies."""
    if runs is None or len(runs) == 0 or "status" not in runs:
        import pandas as pd

        return pd.DataFrame(columns=list(runs.columns) if runs is not None else [])
    done = runs[runs["status"] == "done"]
    needed = [m for m in METRICS[:3] if m in done]
    return done.dropna(subset=needed).reset_index(drop=True) if len(needed) == 3 else done.iloc[0:0]


def correlation_table(runs: pd.DataFrame, x: str = "spelling_accuracy",
                      ys: Sequence[str] = ("position_accuracy", "count_accuracy", "transfer_accuracy"),
                      *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Return Pearson and Spearman correlations of ``x`` with each of ``ys`` across runs, with bootstrap 95%
    intervals (NaN with fewer than 3 runs or a constant column)."""
    import pandas as pd

    records = []
    for y in ys:
        if x not in runs or y not in runs:
            continue
        a, b = runs[x].astype(float).to_numpy(), runs[y].astype(float).to_numpy()
        p = correlation_with_ci(a, b, method="pearson", n_boot=n_boot, seed=seed)
        s = correlation_with_ci(a, b, method="spearman", n_boot=n_boot, seed=seed)
        records.append({"x": x, "y": y, "runs": p["n"], "pearson": p["r"], "pearson_ci_low": p["ci_low"],
                        "pearson_ci_high": p["ci_high"], "spearman": s["r"], "spearman_ci_low": s["ci_low"],
                        "spearman_ci_high": s["ci_high"]})  # fmt: skip
    return pd.DataFrame(records)


def parameter_effects(runs: pd.DataFrame, parameters: Sequence[str] | None = None,
                      metrics: Sequence[str] = METRICS) -> pd.DataFrame:  # fmt: skip
    """Return, for each swept parameter and value, the number of runs and the mean of each metric."""
    import pandas as pd

    parameters = [p for p in (parameters or SEARCH_SPACE) if p in runs]
    metrics = [m for m in metrics if m in runs]
    records = []
    for parameter in parameters:
        for value, group in runs.groupby(parameter, sort=True):
            records.append({"parameter": parameter, "value": value, "runs": len(group),
                            **{f"mean_{m}": float(group[m].astype(float).mean()) for m in metrics}})  # fmt: skip
    return pd.DataFrame(records)


def parameter_importance(effects: pd.DataFrame, metric: str = "transfer_accuracy") -> pd.DataFrame:
    """Return, per parameter, the spread (best minus worst mean ``metric`` over its values) and the best value,
    largest spread first: a first look at which hyperparameters matter (no interactions, no significance)."""
    import pandas as pd

    column = f"mean_{metric}"
    if effects.empty or column not in effects:
        return pd.DataFrame(columns=["parameter", "values", "spread", "best_value", "best_mean"])
    records = []
    for parameter, group in effects.groupby("parameter", sort=False):
        best = group.loc[group[column].idxmax()]
        records.append({"parameter": parameter, "values": len(group),
                        "spread": float(group[column].max() - group[column].min()),
                        "best_value": best["value"], "best_mean": float(best[column])})  # fmt: skip
    return pd.DataFrame(records).sort_values("spread", ascending=False).reset_index(drop=True)


def top_configs(runs: pd.DataFrame, k: int = 5, by: str = "transfer_accuracy") -> pd.DataFrame:
    """Return the ``k`` runs with the highest ``by``: their swept settings and accuracies."""
    columns = ["run_id", *[p for p in SEARCH_SPACE if p in runs], *[m for m in METRICS if m in runs],
               *[c for c in ("position_gain_vs_control", "count_gain_vs_control", "train_steps") if c in runs]]
    if by not in runs or runs.empty:
        return runs.reindex(columns=columns).iloc[0:0]
    return runs.sort_values(by, ascending=False).head(k)[columns].reset_index(drop=True)


def analyze(runs: pd.DataFrame, *, baseline: Mapping[str, Any] | None = None, controls: pd.DataFrame | None = None,
            n_boot: int = 2000, seed: int = 0, title: str = "Spelling transfer") -> TransferAnalysis:  # fmt: skip
    """Return the :class:`TransferAnalysis` of a sweep's runs table (only ``done`` runs count)."""
    done = finished_runs(runs)
    correlations = correlation_table(done, n_boot=n_boot, seed=seed)
    effects = parameter_effects(done)
    analysis = TransferAnalysis(title=title, runs=done, correlations=correlations, effects=effects,
                                importance=parameter_importance(effects), top=top_configs(done),
                                baseline=dict(baseline) if baseline is not None else None, controls=controls)  # fmt: skip
    analysis.notes = _notes(analysis)
    return analysis


def _notes(analysis: TransferAnalysis) -> list[str]:
    """Return plain-language caveats: too few runs, intervals spanning zero, undefined ratios."""
    notes = []
    n = len(analysis.runs)
    if n < 3:
        notes.append(f"Only {n} finished run(s): correlations need at least 3 and are NaN here; "
                     "these are mechanics, not findings.")
    elif n < 10:
        notes.append(f"Only {n} runs: correlation intervals are wide; treat rankings as hints.")
    for _, row in analysis.correlations.iterrows():
        low, high = row["pearson_ci_low"], row["pearson_ci_high"]
        if _finite(low, high) and low <= 0 <= high:
            notes.append(f"The 95% interval of Pearson r for spelling vs {row['y']} includes 0: "
                         "no evidence of a linear link.")
    for task in TRANSFER_TASKS:
        column = f"{task}_transfer_ratio"
        if column in analysis.runs and n and analysis.runs[column].isna().all():
            notes.append(f"{column} is undefined in every run: the spelling gain never exceeded {MIN_SPELLING_GAIN:g}.")
    if analysis.baseline is None:
        notes.append("No baseline run: gains over the untouched model are not available.")
    return notes
