"""Figures of finished training runs: loss curves side by side, gradient norms per layer (live curves: :mod:`.live`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``h.2`` before ``h.10``."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", text)]


def plot_layer_norms(norms: Mapping[int, Mapping[str, float]], *, max_legend: int = 12) -> Figure:
    """Return a figure of ``{step: {layer: norm}}``: norm per layer at the last step (bars) and across steps (lines).

    Uses matplotlib's object API (no pyplot state); show it in a notebook by leaving it as a cell's value, or
    save it with ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure

    steps = list(norms)
    layers = sorted({layer for per_step in norms.values() for layer in per_step}, key=natural_key)
    last = norms[steps[-1]]

    fig = Figure(figsize=(13, 4.8), layout="constrained")
    bars, lines = fig.subplots(1, 2)
    bars.bar(range(len(last)), list(last.values()), color="#1f77b4")
    bars.set_xticks(range(len(last)), list(last), rotation=90, fontsize=7)
    bars.set_ylabel("gradient L2 norm")
    bars.set_title(f"Gradient norm per layer (step {steps[-1]})")

    colors = _colors(len(layers))
    for color, layer in zip(colors, layers, strict=True):
        values = [norms[step].get(layer, math.nan) for step in steps]
        lines.plot(steps, values, marker="o", markersize=3, color=color, label=layer)
    positive = [value for per_step in norms.values() for value in per_step.values() if value > 0]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 100:
        lines.set_yscale("log")
    lines.set_xlabel("step")
    lines.set_ylabel("gradient L2 norm")
    lines.set_title("Gradient norm per layer across checkpoints")
    lines.grid(True, alpha=0.3)
    if len(layers) <= max_legend:
        lines.legend(fontsize=7, loc="best")
    return fig


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(index / max(count - 1, 1)) for index in range(count)]


def plot_loss_curves(ax: Any, histories: Mapping[str, Any], *, title: str = "Training curves") -> None:
    """Draw each run's training loss (line) and evaluation loss (points) on ``ax``.

    ``histories`` maps a run's label to its history table (a DataFrame indexed by step, with ``loss`` and
    ``eval_loss`` columns, as ``FineTuneResult.history_frame()`` returns).
    """
    for name, history in histories.items():
        if "loss" in history:
            ax.plot(history.index, history["loss"], label=f"{name} train", linewidth=1)
        if "eval_loss" in history:
            evals = history["eval_loss"].dropna()
            ax.plot(evals.index, evals, "o--", markersize=3, label=f"{name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="x-small")
