"""Analysis of a sweep: tables of runs, correlations of spelling with transfer, parameter effects, :func:`analyze`.

Tables are pandas DataFrames; :func:`analyze` gathers them into a :class:`~.report.TransferAnalysis` (figures,
HTML and Markdown report) with plain-language caveats (too few runs, intervals spanning zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .answers import is_correct
from .config import METRICS, MIN_SPELLING_GAIN, SEARCH_SPACE, TRANSFER_TASKS
from .questions import TASKS
from .report import TransferAnalysis, all_finite
from .stats import accuracy_with_ci, correlation_with_ci, paired_difference_ci

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def accuracy_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return accuracy, 95% interval and number of questions per task from flat ``<task>_accuracy``... metrics."""
    import pandas as pd

    rows = [{"task": task, **{key: metrics.get(f"{task}_{key}") for key in ("accuracy", "ci_low", "ci_high", "n")}}
            for task in TASKS if f"{task}_accuracy" in metrics]  # fmt: skip
    return pd.DataFrame(rows).set_index("task")


def guess_baselines(dataset: Any, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Return the accuracy of two guesses that need no letter-level skill, with bootstrap 95% intervals: the
    word's *first* letter for every position question, and the split's most common answer for every count
    question (``guess`` says which). A model at or below these has not shown the skill, whatever its score.

    ``dataset`` holds rows with ``task``, ``word`` and ``answer`` (a split of ``build_datasets``).
    """
    import pandas as pd

    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    records = []
    position = [row for row in rows if row["task"] == "position"]
    if position:
        correct = [is_correct(row["word"][0], row["answer"], "position") for row in position]
        records.append({"task": "position", "guess": "the word's first letter",
                        **accuracy_with_ci(correct, n_boot=n_boot, seed=seed)})  # fmt: skip
    count = [row for row in rows if row["task"] == "count"]
    if count:
        common = Counter(str(row["answer"]) for row in count).most_common(1)[0][0]
        correct = [is_correct(common, row["answer"], "count") for row in count]
        records.append({"task": "count", "guess": f"always {common!r}",
                        **accuracy_with_ci(correct, n_boot=n_boot, seed=seed)})  # fmt: skip
    return pd.DataFrame(records, columns=["task", "guess", "accuracy", "ci_low", "ci_high", "n"]).set_index("task")


def paired_gains(predictions: pd.DataFrame, reference: pd.DataFrame, *, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Return, per task, the accuracy of ``predictions``, that of ``reference`` on the same questions, the gain
    and its paired bootstrap 95% interval (:func:`~.stats.paired_difference_ci`), and the questions counted.

    Both frames hold one row per question with ``task``, ``word`` and ``correct`` (``predictions.jsonl`` of two
    runs, see :meth:`~.sweep.SpellingStudy.gains`); questions are matched on (task, word), and both runs must
    have answered the same ones.
    """
    import pandas as pd

    keys = ["task", "word"]
    for name, frame in (("predictions", predictions), ("reference", reference)):
        missing = [c for c in (*keys, "correct") if c not in frame]
        if missing:
            raise ValueError(f"{name} lacks the column(s) {missing}; pass the predictions.jsonl of a run")
        if frame.duplicated(keys).any():
            raise ValueError(f"{name} has several answers to one (task, word) question; cannot pair them")
    merged = predictions[[*keys, "correct"]].merge(reference[[*keys, "correct"]], on=keys, how="outer",
                                                   suffixes=("", "_reference"), indicator=True)  # fmt: skip
    unpaired = merged[merged["_merge"] != "both"]
    if len(unpaired):
        first = unpaired.iloc[0]
        raise ValueError(f"{len(unpaired)} question(s), e.g. {first['task']} {first['word']!r}, were answered by "
                         "one run only: compare runs evaluated on the same split of the same data")  # fmt: skip
    records = []
    for task in [t for t in TASKS if t in set(merged["task"])]:
        rows = merged[merged["task"] == task]
        ours, theirs = rows["correct"].astype(float).to_numpy(), rows["correct_reference"].astype(float).to_numpy()
        gain = paired_difference_ci(ours, theirs, n_boot=n_boot, seed=seed)
        records.append({"task": task, "accuracy": float(ours.mean()), "reference_accuracy": float(theirs.mean()),
                        "gain": gain["difference"], "ci_low": gain["ci_low"], "ci_high": gain["ci_high"],
                        "n": gain["n"]})  # fmt: skip
    return pd.DataFrame(records).set_index("task")


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
        if all_finite(low, high) and low <= 0 <= high:
            notes.append(f"The 95% interval of Pearson r for spelling vs {row['y']} includes 0: "
                         "no evidence of a linear link.")
    for task in TRANSFER_TASKS:
        column = f"{task}_transfer_ratio"
        if column in analysis.runs and n and analysis.runs[column].isna().all():
            notes.append(f"{column} is undefined in every run: the spelling gain never exceeded {MIN_SPELLING_GAIN:g}.")
    if analysis.baseline is None:
        notes.append("No baseline run: gains over the untouched model are not available.")
    return notes
