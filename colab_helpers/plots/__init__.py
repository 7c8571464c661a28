"""Figures, for every stage: drawn from plain data (tensors, dicts, DataFrames), never from stage objects.

- :mod:`.base` -- the shared figure base (``new_figure``, ``save_figure``), log-axis helpers;
- :mod:`.live` -- :class:`~.live.LivePlot`, training curves that redraw in place and end as a PNG;
- :mod:`.pruning` -- head-importance heatmaps, pruned heads per layer, perplexity against level, stage perplexity;
- :mod:`.compression` -- what :func:`~colab_helpers.compress` removed per layer and axis; distillation vs LoRA
  recovery curves;
- :mod:`.sweeps` -- a sweep's runs table as figures;
- :mod:`.training` -- gradient norms of a training run;
- :mod:`.deployment` -- a served model under load: throughput and latency against concurrency, server metrics over time;
- :mod:`.report` -- the one self-contained HTML report builder (tables and figures embedded).

Imports only :mod:`colab_helpers.runtime`; matplotlib and pandas are imported by the functions that draw.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module; loaded on first use (the figures import matplotlib when they draw)
_NAMES: dict[str, str] = {
    "LivePlot": "live",
    "plot_head_importance": "pruning", "plot_importance_grid": "pruning", "plot_level_curves": "pruning",
    "plot_pruned_per_layer": "pruning", "plot_compression": "compression", "plot_recovery_curves": "compression",
    "plot_sweep": "sweeps", "write_html_report": "report",
    "plot_serving": "deployment", "plot_monitoring": "deployment",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
