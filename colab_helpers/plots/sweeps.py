"""Figures and a self-contained HTML report for a sweep's runs table (one row per run, from ``runs.csv``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import figure_html, table_html, write_html_report

if TYPE_CHECKING:
    import pandas as pd

REQUIRED = ("model", "strategy", "pruning_level", "baseline_perplexity", "pruned_perplexity", "fine_tuned_perplexity")


def finished_runs(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Return the ``done`` runs that have the pipeline's metrics; ValueError when there are none."""
    missing = [column for column in REQUIRED if column not in runs.columns]
    if missing or runs.empty:
        raise ValueError(f"no finished pipeline runs to plot (missing columns {missing}); run the sweep first")
    done = runs[runs["status"] == "done"] if "status" in runs.columns else runs
    if done.empty:
        raise ValueError("no run of this sweep is done yet; run it (or rerun it to finish the others) first")
    return done


def with_levels(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Return ``runs`` with ``level`` (what was pruned, 0-1) and ``method`` (how) for every run.

    Head-pruning runs: ``pruning_level`` and the strategy. Compression runs (``target_params`` set): the share of
    parameters removed, ``1 - target_params``, and ``compress <axes>``. Distillation adds `` + distill``.
    """
    import pandas as pd

    done = runs.copy()
    targets = pd.to_numeric(done["target_params"], errors="coerce") if "target_params" in done.columns else None
    compressed = targets.notna() if targets is not None else pd.Series(False, index=done.index)
    done["level"] = done["pruning_level"].astype(float)
    done["method"] = done["strategy"].astype(str)
    if compressed.any():
        axes = done["axes"].astype(str).str.replace(r"[\[\]'\" ]", "", regex=True) if "axes" in done.columns else ""
        done.loc[compressed, "level"] = 1 - targets[compressed]
        done.loc[compressed, "method"] = "compress " + (axes[compressed] if "axes" in done.columns else "")
    if "recovery_method" in done.columns:
        distilled = done["recovery_method"].astype(str) == "distill"
        done.loc[distilled, "method"] = done.loc[distilled, "method"] + " + distill"
    return done


def level_label(runs: "pd.DataFrame") -> str:
    """The x-axis label for :func:`with_levels`' ``level``: heads, parameters, or both kinds of run."""
    kinds = set(runs["method"].str.startswith("compress")) if "method" in runs.columns else {False}
    return {frozenset({False}): "heads pruned", frozenset({True}): "parameters removed"}.get(
        frozenset(kinds), "pruned (heads, or parameters for compress)")


def heat_table(runs: "pd.DataFrame", value: str = "fine_tuned_perplexity") -> "pd.DataFrame":
    """Return ``value`` averaged per (model, method) row and level column (see :func:`with_levels`)."""
    done = with_levels(finished_runs(runs))
    table = done.pivot_table(index=["model", "method"], columns="level", values=value, aggfunc="mean")
    table.columns = [f"{level:.0%}" for level in table.columns]
    return table


def plot_sweep(runs: "pd.DataFrame", *, path: str | os.PathLike[str] | None = None) -> Any:
    """Perplexity vs level per strategy (pruned solid, fine-tuned dashed; one panel per model), the share of the loss
    won back (``recovered_share``), heat table."""
    import numpy as np

    from .base import new_figure

    done = with_levels(finished_runs(runs))
    label = level_label(done)
    models = sorted(done["model"].unique())
    figure = new_figure(4.2 * (len(models) + 2), 3.8)
    axes = figure.subplots(1, len(models) + 2, squeeze=False)[0]
    colors = {name: f"C{index}" for index, name in enumerate(sorted(done["method"].unique()))}
    for ax, model in zip(axes, models):
        subset = done[done["model"] == model]
        for strategy, group in subset.groupby("method"):
            stats = group.groupby("level")[["pruned_perplexity", "fine_tuned_perplexity"]].mean().sort_index()
            x = stats.index * 100
            ax.plot(x, stats["pruned_perplexity"], "o-", color=colors[strategy], label=f"{strategy} pruned")
            ax.plot(x, stats["fine_tuned_perplexity"], "s--", color=colors[strategy], label=f"{strategy} fine-tuned")
        ax.axhline(subset["baseline_perplexity"].mean(), color="grey", linestyle=":", label="unpruned")
        ax.set_title(str(model), loc="left", fontsize=10)
        ax.set_xlabel(f"{label} (%)")
        ax.set_ylabel("perplexity")
        values = subset[["pruned_perplexity", "fine_tuned_perplexity", "baseline_perplexity"]].to_numpy(dtype=float)
        if np.nanmax(values) > 3 * np.nanmin(values):  # log only when it spans a wide range: readable ticks
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    recovery_ax, heat_ax = axes[-2], axes[-1]
    if "recovered_share" in done.columns:
        rec = done.dropna(subset=["recovered_share"]).groupby(["method", "level"])["recovered_share"].mean().unstack(0)
        width = 0.8 / max(len(rec.columns), 1)
        for offset, strategy in enumerate(rec.columns):  # grouped bars by hand: pandas' .plot imports pyplot
            positions = np.arange(len(rec.index)) + (offset - (len(rec.columns) - 1) / 2) * width
            recovery_ax.bar(positions, rec[strategy], width, color=colors[strategy], label=str(strategy))
        recovery_ax.set_xticks(range(len(rec.index)), [f"{level:.0%}" for level in rec.index])
        if len(rec.columns):
            recovery_ax.legend(fontsize="small", title="method", title_fontsize="small")
        recovery_ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    recovery_ax.set_title("Share of lost perplexity recovered", loc="left", fontsize=10)
    recovery_ax.set_xlabel(label)
    table = heat_table(done)
    values = table.to_numpy(dtype=float)
    image = heat_ax.imshow(np.log(values), aspect="auto", cmap="viridis_r")
    heat_ax.set_xticks(range(table.shape[1]), table.columns)
    heat_ax.set_yticks(range(table.shape[0]), [f"{m} · {s}" for m, s in table.index], fontsize=7)
    middle = np.nanmean(np.log(values))
    for (row, col), number in np.ndenumerate(values):
        if math.isfinite(number):  # dark text on the light (low perplexity) cells, white on the dark ones
            color = "black" if math.log(number) <= middle else "white"
            heat_ax.text(col, row, f"{number:.0f}", ha="center", va="center", fontsize=7, color=color)
    heat_ax.set_title("Fine-tuned perplexity", loc="left", fontsize=10)
    figure.colorbar(image, ax=heat_ax, label="log perplexity", shrink=0.8)
    if path is not None:
        figure.save(path)
    return figure


def write_report(runs: "pd.DataFrame", path: str | os.PathLike[str], *, title: str = "Sweep report") -> Path:
    """Write one self-contained HTML file (tables, and figures as embedded PNG) summarizing a sweep; return it."""
    done = finished_runs(runs)
    status = runs["status"].value_counts().to_dict() if "status" in runs.columns else {}
    columns = [c for c in ("run_id", "model", "strategy", "pruning_level", "status", "baseline_perplexity",
                           "pruned_perplexity", "fine_tuned_perplexity", "recovered_share", "heads_pruned",
                           "fine_tuned_parameters", "run_seconds", "error") if c in runs.columns]  # fmt: skip
    best = done.sort_values("fine_tuned_perplexity").head(5)[[c for c in columns if c in done.columns]]
    return write_html_report(path, title, {
        "Figures": figure_html(plot_sweep(runs), "sweep figures"),
        "Fine-tuned perplexity by strategy and level": table_html(heat_table(done).round(2), index=True),
        "Best runs (lowest fine-tuned perplexity)": best.round(3),
        "All runs": runs[columns].round(3),
    }, intro=f"Runs: {status}.")  # fmt: skip
