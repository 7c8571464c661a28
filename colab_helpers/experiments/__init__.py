"""Stage 4, experiments: one run of the whole pipeline, sweeps of runs, their tracking and the command line.

- :mod:`.config` -- :class:`~.config.ExperimentConfig`, the one config of a run, and what it prunes
  (:class:`~.config.HeadPruning` or :class:`~.config.Compression`; the flat keys of YAML files build them);
- :mod:`.pipeline` -- :class:`~.pipeline.Experiment`: baseline -> prune -> recover -> measure every stage (in-domain
  perplexity and general ability);
- :mod:`.result` -- :class:`~.result.ExperimentResult`, the typed result of a run, and its ``result.json``;
- :mod:`.report` -- tables and figures of results (:func:`~.report.comparison_table`,
  :func:`~.report.ability_comparison`, :func:`~.report.plot_results`);
- :mod:`.sweep` -- :class:`~.sweep.Sweep`: many runs, tracked and resumable; :func:`~.sweep.run_sweep` for YAML;
- :mod:`.sweep_config` -- YAML run configs and sweeps: load, merge dotted keys, expand;
- :mod:`.tracking` -- one directory and one ``runs.csv`` row per run (:class:`~.tracking.RunManager`,
  ``start_or_skip`` resumes a sweep);
- :mod:`.run_ids` -- run ids and config fingerprints;
- :mod:`.runs_table` -- the ``runs.csv`` file: cells, parse / read / render the table, its locked rewrite;
- :mod:`.mirrors` -- optional W&B / TensorBoard mirrors of tracked runs;
- :mod:`.cli` -- ``python -m colab_helpers runs | sweep | run``.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module; loaded on first use (the pipeline imports torch when it runs, the tables pandas)
_NAMES: dict[str, str] = {
    "ExperimentConfig": "config", "HeadPruning": "config", "Compression": "config",
    "Experiment": "pipeline", "ExperimentResult": "result", "StageMetrics": "result", "Training": "result",
    "HeadsPruned": "result", "Compressed": "result",
    "comparison_table": "report", "ability_comparison": "report", "recovery_table": "report", "generations_table": "report",
    "training_history": "report", "plot_results": "report",
    "Sweep": "sweep", "run_config": "sweep", "run_sweep": "sweep", "plan_sweep": "sweep",
    "load_config": "sweep_config", "load_sweep": "sweep_config", "SweepConfig": "sweep_config",
    "expand": "sweep_config", "merge": "sweep_config",
    "RunManager": "tracking", "Run": "tracking", "read_runs": "runs_table",
}  # fmt: skip
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
