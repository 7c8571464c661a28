"""Pruning figures: right content, readable at both ends of the size range, saved as PNG, no pyplot."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from colab_helpers.plots import pruning as figures

PNG = b"\x89PNG"


@pytest.mark.parametrize("shape", [(2, 4), (12, 12), (48, 64)])
def test_heatmap_marks_pruned_heads_and_saves(shape: tuple[int, int], tmp_path: Path) -> None:
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    scores[0, -1] = float("nan")  # a removed head
    mask = scores < 0.3
    figure = figures.plot_head_importance(scores, mask, path=tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes().startswith(PNG)
    assert figure._repr_png_().startswith(PNG)
    ax = figure.axes[0]
    assert f"({int(mask.sum())})" in ax.get_title(loc="left")
    width, height = figure.get_size_inches()
    assert 4 <= width <= 14 and 2.5 <= height <= 11
    assert len(ax.get_xticks()) <= 18 and len(ax.get_yticks()) <= 18  # thinned tick labels


def test_heatmap_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="must match"):
        figures.plot_head_importance(torch.rand(2, 4), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="layers, heads"):
        figures.plot_head_importance(torch.rand(8))


def test_grid_and_per_layer_counts(tmp_path: Path) -> None:
    grid = figures.plot_importance_grid({"a": torch.rand(3, 4), "b": torch.rand(3, 4), "c": torch.rand(3, 4)})
    assert [ax.get_title(loc="left") for ax in grid.axes if ax.get_title(loc="left")] == ["a", "b", "c"]
    mask = torch.tensor([[True, False, False, False], [True, True, False, False], [False] * 4])
    bars = figures.plot_pruned_per_layer(mask, path=tmp_path / "bars.png")
    assert "3 of 12 pruned" in bars.axes[0].get_title(loc="left")
    heights = [patch.get_height() for patch in bars.axes[0].patches]
    assert heights == [3, 2, 4, 1, 2, 0]  # kept per layer, then pruned per layer


def test_level_curves_one_line_per_strategy_with_spread() -> None:
    rows = [
        {"strategy": s, "level": level, "seed": seed, "perplexity": 10 + level * 10 + seed}
        for s in ("random", "gradient") for level in (0.0, 0.3, 0.5) for seed in range(3)
    ]
    figure = figures.plot_level_curves(pd.DataFrame(rows), baseline=10.0)
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"gradient", "random", "unpruned"}
    assert list(lines["random"].get_xdata()) == [0, 30, 50]
    assert list(lines["random"].get_ydata()) == [11, 14, 16]  # means over seeds
    assert len(ax.collections) == 2  # spread bands
    with pytest.raises(ValueError, match="lacks columns"):
        figures.plot_level_curves(pd.DataFrame({"x": [1]}))


def test_figures_never_import_pyplot() -> None:
    # pyplot keeps global state and picks a GUI backend; our figures use the object API only (fresh process:
    # other libraries in the test session may import pyplot themselves)
    import subprocess

    code = (
        "import sys, torch, pandas as pd; from colab_helpers.plots import pruning as figures, sweeps as sweep_plots\n"
        "figures.plot_head_importance(torch.rand(2, 4), torch.rand(2, 4) < 0.5)\n"
        "figures.plot_level_curves(pd.DataFrame({'strategy': ['a', 'a'], 'level': [0.0, 0.3], 'perplexity': [9.0, 12.0]}))\n"
        "rows = [dict(model='m', strategy=s, pruning_level=l, status='done', baseline_perplexity=9.0,\n"
        "             pruned_perplexity=10 + l, fine_tuned_perplexity=9.5 + l, recovery=0.5) for s in 'ab' for l in (0.1, 0.3)]\n"
        "sweep_plots.plot_sweep(pd.DataFrame(rows))\n"
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sweep_plots_put_compression_runs_on_the_parameters_removed() -> None:
    from colab_helpers.plots import sweeps

    rows = [dict(model="m", strategy="gradient", pruning_level=0.3, target_params=None, axes="['heads', 'mlp', 'layers']",
                 recovery_method="lora", status="done", baseline_perplexity=9.0, pruned_perplexity=12.0,
                 fine_tuned_perplexity=10.0, recovery=0.6)]  # fmt: skip
    rows += [dict(model="m", strategy="gradient", pruning_level=0.3, target_params=t, axes="['heads', 'mlp']",
                  recovery_method=r, status="done", baseline_perplexity=9.0, pruned_perplexity=20 - 10 * t,
                  fine_tuned_perplexity=12 - 2 * t, recovery=0.5) for t in (0.9, 0.75) for r in ("lora", "distill")]  # fmt: skip
    levels = sweeps.with_levels(pd.DataFrame(rows))
    assert levels["level"].round(2).tolist() == [0.3, 0.1, 0.1, 0.25, 0.25]
    assert levels["method"].tolist() == ["gradient", "compress heads,mlp", "compress heads,mlp + distill",
                                         "compress heads,mlp", "compress heads,mlp + distill"]  # fmt: skip
    assert sweeps.level_label(levels) == "pruned (heads, or parameters for compress)"
    assert sweeps.level_label(levels[levels["method"] != "gradient"]) == "parameters removed"
    table = sweeps.heat_table(pd.DataFrame(rows))
    assert list(table.columns) == ["10%", "25%", "30%"]
    figure = sweeps.plot_sweep(pd.DataFrame(rows[1:]))
    assert figure.axes[0].get_xlabel() == "parameters removed (%)"
    labels = {line.get_label() for line in figure.axes[0].get_lines()}
    assert "compress heads,mlp + distill fine-tuned" in labels
