"""Figures for compression across axes: what :func:`~colab_helpers.compress` removed per layer and axis, and
the training curves of distillation against plain LoRA recovery.

Like every figure of :mod:`colab_helpers.plots`, each function returns a figure that shows itself in a notebook
and, given ``path``, is saved as a PNG; matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import finish_figure, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_compression(
    report: Mapping[str, Any], *, title: str = "What compression removed", path: str | os.PathLike[str] | None = None
) -> Figure:
    """Two panels over the original layers: share of MLP channels and of attention heads each layer kept.

    ``report`` is a compression report as plain data (``CompressReport.to_dict()``, or the ``pruning`` entry of
    a pipeline result). Removed layers are grey hatched bars ("layer removed"); kept shares blue, removed red.
    """
    import numpy as np

    data = dict(report)
    layers = len(data["heads_before"])
    removed_layers = set(data["removed_layers"])
    positions = np.arange(layers)
    figure = new_figure(7.5, 4.6)
    axes = figure.subplots(2, 1, sharex=True)
    panels = (("mlp", "MLP channels kept"), ("heads", "attention heads kept"))
    for ax, (axis, label) in zip(axes, panels):
        before = np.asarray(data[f"{axis}_before"], dtype=float)
        after = np.asarray(data[f"{axis}_after"], dtype=float)
        kept = np.divide(after, before, out=np.zeros_like(after), where=before > 0)
        alive = np.asarray([i not in removed_layers for i in range(layers)])
        ax.bar(positions[alive], kept[alive], color="tab:blue", label="kept")
        ax.bar(positions[alive], 1 - kept[alive], bottom=kept[alive], color="tab:red", alpha=0.55, label="removed")
        if removed_layers:
            gone = positions[~alive]
            ax.bar(gone, np.ones(len(gone)), color="0.6", hatch="//", edgecolor="0.35", label="layer removed")
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("share kept")
        total_before, total_after = int(before.sum()), int(after.sum())
        ax.set_title(f"{label}: {total_after:,} of {total_before:,}", fontsize=10, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xlabel("layer (original index)")
    axes[-1].set_xticks(positions if layers <= 32 else positions[:: max(1, layers // 16)])
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles, labels, fontsize="x-small", loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False)
    removed = data.get("removed_params", {})
    parts = ", ".join(f"{axis} {n / 1e6:.1f}M" for axis, n in removed.items() if n)
    figure.suptitle(
        f"{title}: {data['params_before'] / 1e6:.1f}M -> {data['params_after'] / 1e6:.1f}M parameters"
        + (f" ({parts})" if parts else ""),
        fontsize=11,
    )
    return finish_figure(figure, path)


def plot_recovery_curves(
    histories: Mapping[str, Any], *, title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Left: each run's LM loss on its training batches (``lm_loss`` for distillation, whose ``loss`` mixes in
    the KD term; ``loss`` otherwise); right: the held-out evaluation loss when it was measured.

    ``histories`` maps a label to a history table (``FineTuneResult.history_frame()``: indexed by step). The default
    title names the runs (``"Recovery: distillation vs LM loss"``).
    """
    title = title if title is not None else "Recovery: " + " vs ".join(histories)
    figure = new_figure(9.0, 3.4)
    train_ax, eval_ax = figure.subplots(1, 2)
    for name, history in histories.items():
        column = "lm_loss" if "lm_loss" in history and history["lm_loss"].notna().any() else "loss"
        if column in history:
            smooth = history[column].rolling(5, min_periods=1).mean()
            line, = train_ax.plot(history.index, smooth, linewidth=1.4, label=name)
            train_ax.plot(history.index, history[column], linewidth=0.5, alpha=0.35, color=line.get_color())
        if "eval_loss" in history:
            evals = history["eval_loss"].dropna()
            if len(evals):
                eval_ax.plot(evals.index, evals, "o-", markersize=3, label=name)
    train_ax.set_title("LM loss on training batches (5-step mean)", fontsize=10, loc="left")
    eval_ax.set_title("LM loss on held-out text", fontsize=10, loc="left")
    for ax in (train_ax, eval_ax):
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="x-small")
    figure.suptitle(title, fontsize=11)
    return finish_figure(figure, path)
