"""Stage 4, experiments: one run of the whole pipeline, sweeps of runs, their tracking and the command line.

- :mod:`.config` -- :class:`~.config.ExperimentConfig`, the one config of a run (it builds the fine-tuning config);
- :mod:`.pipeline` -- :class:`~.pipeline.PruningExperiment`: baseline -> importance -> prune -> LoRA -> compare;
- :mod:`.sweep_config` -- YAML run configs and sweeps: load, merge dotted keys, expand;
- :mod:`.sweep` -- run a sweep of pipeline runs, resumable (:func:`~.sweep.run_sweep`);
- :mod:`.tracking` -- one directory and one ``runs.csv`` row per run (:class:`~.tracking.RunManager`,
  ``start_or_skip`` resumes a sweep);
- :mod:`.runs_table` -- the ``runs.csv`` format: cells, parse / read / render the table, its file lock;
- :mod:`.mirrors` -- optional W&B / TensorBoard mirrors of tracked runs;
- :mod:`.cli` -- ``python -m colab_helpers runs | sweep | run``.

This package was the module ``colab_helpers.experiments`` (the sweep runner): its names stay importable here.
"""

from __future__ import annotations

from .sweep import PruningFineTuningExperiment, run_config, run_sweep

__all__ = ["PruningFineTuningExperiment", "run_config", "run_sweep"]
