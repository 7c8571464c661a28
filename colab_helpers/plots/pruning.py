"""Figures for head pruning: importance heatmaps, pruned heads per layer, perplexity against pruning level.

Every function returns a figure of :mod:`.base` (it shows itself in a notebook with no pyplot state, so it works
headless and under papermill) and, given ``path``, saves it as a PNG. matplotlib is imported only when a figure
is made. Also the pipeline's perplexity per stage (:func:`plot_stage_perplexity`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .base import finish_figure, new_figure, plain_log_axis, wide_range

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.figure import Figure

_MARK_ALL_HEADS_UP_TO = 1024  # beyond this many cells, per-head markers become noise: shade instead


def _as_array(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def plot_head_importance(
    scores: "torch.Tensor",
    mask: "torch.Tensor | None" = None,
    *,
    title: str = "Head importance",
    path: str | os.PathLike[str] | None = None,
    ax: Any | None = None,
) -> "Figure":
    """Heatmap of ``scores`` [layers, heads] (brighter = more important), pruned heads (``mask`` True) marked.

    Readable from 2x4 up to 48 layers x 64 heads: the size grows with the grid within bounds, tick labels are
    thinned, and missing heads (NaN, e.g. after removal) are grey. Up to 1024 heads each pruned head gets an
    ``x``; beyond that pruned heads are shaded.
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    values = _as_array(scores)
    if values.ndim != 2:
        raise ValueError(f"scores must be [layers, heads], got shape {values.shape}; pass head_importance(...)'s result")
    layers, heads = values.shape
    figure = None
    if ax is None:
        figure = new_figure(min(max(4.0, 0.22 * heads + 2.2), 14.0), min(max(2.6, 0.22 * layers + 1.4), 11.0))
        ax = figure.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="importance", shrink=0.9)
    if mask is not None:
        pruned = _as_array(mask).astype(bool)
        if pruned.shape != values.shape:
            raise ValueError(f"mask shape {pruned.shape} must match scores shape {values.shape}")
        rows, cols = np.nonzero(pruned)
        if layers * heads <= _MARK_ALL_HEADS_UP_TO:
            size = max(8.0, min(60.0, 2400.0 / max(layers, heads)))
            ax.scatter(cols, rows, marker="x", color="red", s=size, linewidths=1.2)
            title = f"{title} · x = pruned ({len(rows)})"
        else:
            ax.imshow(np.ma.masked_where(~pruned, np.ones_like(values)), aspect="auto", cmap="Reds", alpha=0.55,
                      vmin=0, vmax=1.5, interpolation="nearest")
            title = f"{title} · red = pruned ({len(rows)})"
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(heads, 16), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(layers, 16), integer=True))
    ax.set_title(title, fontsize=11, loc="left")
    return finish_figure(figure, path) if figure is not None else ax.figure


def plot_importance_grid(
    scores_by_strategy: Mapping[str, "torch.Tensor"],
    masks: Mapping[str, "torch.Tensor"] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
) -> "Figure":
    """One heatmap per strategy side by side (2 per row), each with its pruned heads marked."""
    names = list(scores_by_strategy)
    if not names:
        raise ValueError("scores_by_strategy is empty; pass e.g. {'gradient': head_importance(...)}")
    layers, heads = _as_array(scores_by_strategy[names[0]]).shape
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    panel_w = min(max(3.6, 0.16 * heads + 2.2), 8.0)
    panel_h = min(max(2.4, 0.16 * layers + 1.2), 7.0)
    figure = new_figure(panel_w * cols, panel_h * rows)
    for index, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, index + 1)
        plot_head_importance(scores_by_strategy[name], (masks or {}).get(name), title=name, ax=ax)
    return finish_figure(figure, path)


def plot_pruned_per_layer(
    mask: "torch.Tensor",
    heads_per_layer: Sequence[int] | None = None,
    *,
    title: str = "Heads per layer",
    path: str | os.PathLike[str] | None = None,
) -> "Figure":
    """Stacked bars per layer: heads kept and heads pruned (``mask`` True = pruned)."""
    import numpy as np

    pruned = _as_array(mask).astype(bool)
    layers = pruned.shape[0]
    totals = np.asarray(heads_per_layer if heads_per_layer is not None else [pruned.shape[1]] * layers)
    pruned_count = pruned.sum(axis=1)
    kept = totals - pruned_count
    horizontal = layers > 24  # many layers read better down the page
    figure = new_figure(6.5, min(max(2.8, 0.18 * layers + 1.2), 10.0) if horizontal else 3.0)
    ax = figure.add_subplot()
    positions = np.arange(layers)
    bar = ax.barh if horizontal else ax.bar
    bar(positions, kept, color="tab:blue", label="kept")
    if horizontal:
        ax.barh(positions, pruned_count, left=kept, color="tab:red", label="pruned")
        ax.set_ylabel("layer")
        ax.set_xlabel("heads")
        ax.invert_yaxis()
    else:
        ax.bar(positions, pruned_count, bottom=kept, color="tab:red", label="pruned")
        ax.set_xlabel("layer")
        ax.set_ylabel("heads")
        ax.set_xticks(positions if layers <= 24 else positions[:: max(1, layers // 12)])
    ax.legend(fontsize="small", loc="best")
    ax.set_title(f"{title}: {int(pruned_count.sum())} of {int(totals.sum())} pruned", fontsize=11, loc="left")
    return finish_figure(figure, path)


def plot_level_curves(
    table: "pd.DataFrame",
    *,
    x: str = "level",
    y: str = "perplexity",
    by: str = "strategy",
    baseline: float | None = None,
    title: str = "Perplexity against pruning level",
    log_y: bool | None = None,
    path: str | os.PathLike[str] | None = None,
    ax: Any | None = None,
) -> "Figure":
    """One line per ``by`` value: the mean of ``y`` at each ``x``, with the min-max spread shaded when repeated.

    ``table`` has one row per measurement (e.g. per strategy x level x seed). ``log_y`` None uses a log axis
    only when the values span more than a factor of 3 (narrow ranges read better on a linear axis).
    """
    missing = [column for column in (x, y, by) if column not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    figure = None
    if ax is None:
        figure = new_figure(6.4, 3.8)
        ax = figure.add_subplot()
    for name, group in table.groupby(by, sort=True):
        stats = group.groupby(x)[y].agg(["mean", "min", "max", "count"]).sort_index()
        (line,) = ax.plot(stats.index * (100 if stats.index.max() <= 1 else 1), stats["mean"], marker="o",
                          markersize=4, label=str(name))
        if (stats["count"] > 1).any():
            ax.fill_between(stats.index * (100 if stats.index.max() <= 1 else 1), stats["min"], stats["max"],
                            color=line.get_color(), alpha=0.18, linewidth=0)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="unpruned")
    if log_y is None:
        log_y = wide_range(table[y].tolist())
    if log_y:
        plain_log_axis(ax)
    ax.set_xlabel("heads pruned (%)" if x == "level" else x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", title=by, title_fontsize="small")
    ax.set_title(title, fontsize=11, loc="left")
    return finish_figure(figure, path) if figure is not None else ax.figure


def plot_stage_perplexity(ax: Any, results: Sequence[Mapping[str, Any]], stages: Sequence[str]) -> None:
    """Draw in-domain perplexity per pipeline stage on ``ax``: one line of points per run, the control beside it.

    ``results`` are pipeline result dicts (``name``, ``stages.<stage>.perplexity``, optional ``control``). The
    axis starts near the data (a 1% change is visible) and says so; a range over 3x goes on a plain log axis.
    """
    labels = [stage.replace("_", "-") for stage in stages] + ["control"]
    values: list[float] = []
    for result in results:
        ppl = [result["stages"][stage]["perplexity"] for stage in stages]
        (line,) = ax.plot(range(len(stages)), ppl, "o-", label=result["name"])
        values += ppl
        if "control" in result:
            control = result["control"]["perplexity"]
            ax.plot([len(stages)], [control], "s", color=line.get_color())
            values.append(control)
            ppl.append(control)
        for x, value in enumerate(ppl):
            ax.annotate(f"{value:.1f}", (x, value), textcoords="offset points", xytext=(5, 4), fontsize=8)
    shown = labels if any("control" in result for result in results) else labels[:-1]
    ax.set_xticks(range(len(shown)), shown)
    ax.set_xlim(-0.3, len(shown) - 0.5)
    ax.margins(y=0.15)  # room for the value labels
    if wide_range(values):
        plain_log_axis(ax)
        ax.set_ylabel("in-domain perplexity (log axis; lower is better)")
    else:
        ax.set_ylabel("in-domain perplexity (axis not from 0; lower is better)")
    # in-domain: the text fine-tuning trains on, where a drop can be domain adaptation (general ability: the tables)
    ax.set_title("In-domain perplexity per stage (not general ability)", loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
