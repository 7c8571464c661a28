"""Sweeps of the pipeline: many runs of :class:`~.pipeline.Experiment`, tracked in ``runs.csv`` and resumable.

``Sweep(results_dir).run(strategies=[...], pruning_levels=[...], models=[...])`` runs every combination (and
``Sweep.run_configs(configs)`` any list of configs) through one :class:`~.pipeline.Experiment`, records each run with
:class:`~.tracking.RunManager` and returns the runs table. Rerunning the same sweep skips runs already ``done`` and
redoes ``running`` (interrupted) or ``failed`` ones, so a sweep survives a disconnect. :func:`run_config` and
:func:`run_sweep` are the YAML / command-line forms.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runtime.files import ensure_writable_dir
from .config import CONFIG_KEYS, STAGES, ExperimentConfig
from .pipeline import Experiment
from .result import Compressed, ExperimentResult
from .runs_table import flatten
from .tracking import RunManager

logger = logging.getLogger(__name__)

DEFAULT_SWEEP = "sweep"
BACKENDS = ("local", "ray")


def _check_list(name: str, values: Any, example: str) -> list[Any]:
    """Return ``values`` as a list; TypeError when it is one value (a string would be iterated letter by letter)."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a list such as {example}, got {values!r} ({type(values).__name__}); "
            f"for one value write {name}=[{values!r}]"
        )
    return list(values)


# the metrics ``run_metrics`` records: a config key of a run may not use these names (they share its runs.csv row)
METRIC_NAMES: tuple[str, ...] = (
    *(f"{stage}_{what}" for stage in STAGES for what in ("perplexity", "parameters", "latency_ms")),
    "heads_pruned", "recovered_share", "training_steps", "run_seconds", "control_perplexity",
    "predicted_speedup", "layers_removed",  # compression runs
    # general ability (ability=True): other-domain perplexity per stage, task retention against the baseline
    *(f"{stage}_general_ppl" for stage in (*STAGES, "control")),
    *(f"{stage}_task_retention" for stage in (*STAGES[1:], "control")), "recovered_share_in_domain",
)  # fmt: skip


def run_metrics(result: ExperimentResult) -> dict[str, Any]:
    """Return the flat metrics of one pipeline result, as recorded in ``runs.csv`` (names in ``METRIC_NAMES``).

    ``recovered_share`` is on general perplexity when the run measured abilities (``recovered_share_in_domain``
    beside it), as :func:`~.result.recovered_shares` says."""
    metrics: dict[str, Any] = {}
    for stage, values in result.stages.items():
        metrics[f"{stage}_perplexity"] = values.perplexity
        metrics[f"{stage}_parameters"] = values.parameters
        metrics[f"{stage}_latency_ms"] = values.latency_ms_per_token
    metrics["heads_pruned"] = result.pruning.heads_pruned
    if isinstance(result.pruning, Compressed):  # the rest of its report is in result.json
        metrics["predicted_speedup"] = result.pruning.report.predicted_speedup
        metrics["layers_removed"] = len(result.pruning.report.removed_layers)
    metrics["recovered_share"] = result.recovered_share
    metrics["recovered_share_in_domain"] = result.recovered_share_in_domain
    metrics["training_steps"] = result.training.steps
    metrics["run_seconds"] = result.seconds
    if result.control is not None:
        metrics["control_perplexity"] = result.control.perplexity
    return metrics | _ability_metrics(result)


def _ability_metrics(result: ExperimentResult) -> dict[str, Any]:
    """``<stage>_general_ppl`` per stage (the control's too) and ``<stage>_task_retention`` against the baseline
    (NaN without ranked tasks); empty when the run measured no ability."""
    from ..evaluation.ability import ability_retention

    reference = result.baseline.ability
    if reference is None:
        return {}
    stages = result.stages | ({"control": result.control} if result.control is not None else {})
    metrics: dict[str, Any] = {}
    for stage, values in stages.items():
        metrics[f"{stage}_general_ppl"] = values.general_ppl
        if stage != "baseline" and values.ability is not None:
            metrics[f"{stage}_task_retention"] = ability_retention(values.ability, reference)
    return metrics


class Sweep:
    """Run the pipeline over many configs, tracked under ``results_dir`` (``runs.csv``, one folder per run)."""

    def __init__(self, results_dir: str | os.PathLike[str] = "results/sweeps", *, progress: bool = True,
                 live_plot: bool = False, mirror: str | None = None) -> None:  # fmt: skip
        self.results_dir = ensure_writable_dir(results_dir)
        self.progress = progress
        self.experiment = Experiment(self.results_dir, progress=progress, live_plot=live_plot)
        self.manager = RunManager(self.results_dir, mirror=mirror)
        self.sweep = DEFAULT_SWEEP  # the last sweep run: what runs(), plot_results() and report() show

    def run(self, strategies: Sequence[str] = ("random", "gradient"), pruning_levels: Sequence[float] = (0.1, 0.3, 0.5),
            models: Sequence[str] = ("auto",), *, max_runtime: float | None = None, sweep: str = DEFAULT_SWEEP,
            smoke: bool = False, backend: str = "local", **settings: Any) -> Any:  # fmt: skip
        """Prune heads for every (model, strategy, level) combination; return the sweep's runs as a pandas DataFrame.

        ``settings`` are further run settings (``CONFIG_KEYS``: ``fine_tuning_steps``, ``prompt``, ``scope``, ...).
        Every configuration is validated before the first run starts; the rest is :meth:`run_configs`'.
        """
        strategies = _check_list("strategies", strategies, "['random', 'gradient']")
        pruning_levels = _check_list("pruning_levels", pruning_levels, "[0.1, 0.3]")
        models = _check_list("models", models, "['embedded-gpt2']")
        unknown = sorted(set(settings) - set(CONFIG_KEYS))
        if unknown:
            raise TypeError(f"unknown run setting(s) {unknown}; the settings are {', '.join(CONFIG_KEYS)}")
        configs = [
            ExperimentConfig.from_dict({"model": model, "strategy": strategy, "pruning_level": level, **settings})[0]
            for model, strategy, level in itertools.product(models, strategies, pruning_levels)
        ]
        if smoke:  # every non-embedded model becomes embedded-gpt2: keep one run of each
            configs = list(dict.fromkeys(config.smoke() for config in configs))
        if not configs:
            raise ValueError("the sweep is empty: give at least one strategy, pruning level and model")
        return self.run_configs(configs, sweep=sweep, max_runtime=max_runtime, backend=backend)

    def run_configs(self, configs: Sequence[ExperimentConfig], *, sweep: str = DEFAULT_SWEEP,
                    max_runtime: float | None = None, extras: Sequence[Mapping[str, Any]] | None = None,
                    backend: str = "local", cpus_per_trial: float = 1) -> Any:  # fmt: skip
        """Run ``configs`` as sweep ``sweep`` (skipping runs already done); return the sweep's runs table.

        ``max_runtime`` (seconds) stops starting new runs once exceeded and records the rest as ``skipped``; a
        failing run is recorded as ``failed`` with its error and the sweep goes on. ``extras`` (one mapping per
        config) are extra config keys recorded with each run but not used. The table's ``attrs["run_ids"]`` holds
        the ids of this call's runs, one per config (a run done earlier keeps its id), so a caller can tell which of
        them failed (the command line does). ``backend="local"`` runs them one after another in this process;
        ``"ray"`` runs them as Ray Tune trials (``pip install "ray[tune]"``; a local Ray instance is started if none
        is running), recording into the same ``runs.csv`` (its writes are locked, so other processes are safe).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if extras is not None:
            if len(extras) != len(configs):
                raise ValueError(f"extras must hold one mapping per config: {len(configs)} configs, {len(extras)} extras")
            for extra in extras:
                _check_extra(extra)
        self.sweep = sweep
        records = [{**config.to_dict(), **(extras[index] if extras else {})} for index, config in enumerate(configs)]
        if backend == "ray":
            return self._run_on_ray(configs, records, sweep=sweep, max_runtime=max_runtime, cpus=cpus_per_trial)
        return self._run_here(configs, records, sweep=sweep, max_runtime=max_runtime)

    def _run_here(self, configs: Sequence[ExperimentConfig], records: list[dict[str, Any]], *, sweep: str,
                  max_runtime: float | None) -> Any:  # fmt: skip
        """Run the configs one after another in this process, with one progress bar over runs."""
        from tqdm.auto import tqdm

        started = time.monotonic()
        run_ids: list[str] = []
        counts = dict.fromkeys(("done", "failed", "skipped"), 0)
        bar = tqdm(total=len(configs), desc=f"sweep {sweep}", unit="run", disable=not self.progress)
        for config, record in zip(configs, records):
            start = self.manager.start_or_skip(record, sweep=sweep)
            run_ids.append(start.run_id)
            if start.run is None:  # done in an earlier session
                counts["done"] += 1
                bar.update(1)
                continue
            if max_runtime is not None and time.monotonic() - started > max_runtime:
                start.run.finish("skipped", error=f"max_runtime of {max_runtime:g} s reached before this run started")
                counts["skipped"] += 1
            else:
                counts[self._run_tracked(config, start.run)] += 1
            bar.update(1)
            bar.set_postfix(**counts)
        bar.close()
        return self._table(run_ids)

    def _run_tracked(self, config: ExperimentConfig, run: Any) -> str:
        """Run ``config`` as the started ``run``: its metrics and status recorded; return the status."""
        try:
            result = self.experiment.run(config, output_dir=self.manager.run_dir(run.run_id))
            run.update_metrics(run_metrics(result))
            run.finish("done")
            return "done"
        except Exception as error:  # noqa: BLE001 - one failing run is recorded; the sweep goes on
            logger.warning("run %s failed: %s", run.run_id, error)
            run.finish("failed", error=error)
            return "failed"

    def _run_on_ray(self, configs: Sequence[ExperimentConfig], records: list[dict[str, Any]], *, sweep: str,
                    max_runtime: float | None, cpus: float) -> Any:  # fmt: skip
        """Run the configs not done yet as Ray Tune trials; each trial records its own run in ``runs.csv``."""
        try:
            import ray
            from ray import tune
        except ImportError as error:
            raise ImportError('backend="ray" needs Ray Tune: pip install "ray[tune]"; or use backend="local"') from error
        jobs = []
        run_ids: list[str] = []
        for config, record in zip(configs, records):
            start = self.manager.start_or_skip(record, sweep=sweep)
            run_ids.append(start.run_id)
            if start.run is not None:  # not done yet
                jobs.append({"run_id": start.run.run_id, "config": config.to_dict()})
        if jobs:
            started_here = not ray.is_initialized()
            if started_here:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                root = str(self.results_dir)
                tuner = tune.Tuner(
                    tune.with_resources(functools.partial(_ray_trial, root), {"cpu": cpus}),
                    param_space={"job": tune.grid_search(jobs)},
                    tune_config=tune.TuneConfig(time_budget_s=max_runtime),
                    run_config=tune.RunConfig(storage_path=str(self.results_dir.resolve() / "ray"), name=sweep, verbose=0),
                )  # fmt: skip
                tuner.fit()
            finally:
                if started_here:
                    ray.shutdown()
            for job in jobs:  # trials the time budget stopped or never started
                if self.manager.get(job["run_id"]).get("status") == "running":
                    self.manager.finish(job["run_id"], "skipped", error=f"max_runtime of {max_runtime} s reached")
        return self._table(run_ids)

    def _table(self, run_ids: list[str]) -> Any:
        """The sweep's runs table, with the ids of the runs of this call in ``table.attrs["run_ids"]`` (config order)."""
        table = self.runs()
        table.attrs["run_ids"] = list(run_ids)
        return table

    def runs(self, sweep: str | None = None) -> Any:
        """Return the runs of ``sweep`` (default: the last one run) as a DataFrame."""
        return self.manager.runs(sweep=sweep or self.sweep)

    def plot_results(self, path: str | os.PathLike[str] | None = None, *, sweep: str | None = None) -> Any:
        """Perplexity vs pruning level per strategy (one panel per model), the share recovered, and a strategy x
        level table; saved to ``path`` (default ``results_dir/sweep.png``)."""
        from ..plots.sweeps import plot_sweep

        return plot_sweep(self.runs(sweep), path=path or self.results_dir / "sweep.png")

    def report(self, path: str | os.PathLike[str] | None = None, *, sweep: str | None = None) -> Path:
        """Write one self-contained HTML report of the sweep (tables and figures embedded); return its path."""
        from ..plots.sweeps import write_report

        return write_report(self.runs(sweep), path or self.results_dir / "report.html", title=f"Sweep {sweep or self.sweep}")


def _ray_trial(root: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """One Ray Tune trial: run one pipeline config and record it in ``root/runs.csv`` (runs in a Ray worker)."""
    job = params["job"]
    manager = RunManager(root, record_environment=False)
    try:
        experiment = Experiment(root, progress=False, live_plot=False)
        config = ExperimentConfig.from_dict(job["config"])[0]
        result = experiment.run(config, output_dir=manager.run_dir(job["run_id"]))
        metrics = run_metrics(result)
        manager.update_metrics(job["run_id"], metrics)
        manager.finish(job["run_id"], "done")
    except Exception as error:  # noqa: BLE001 - recorded as failed; Tune goes on with the other trials
        manager.finish(job["run_id"], "failed", error=error)
        return {"failed": 1.0}
    return {key: value for key, value in metrics.items() if isinstance(value, int | float)}


# --- the YAML / command-line form ---------------------------------------------------------------------


def check_run_config(config: Mapping[str, Any]) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Return the :class:`ExperimentConfig` of a YAML-style ``config`` and its extra keys (tracked, unused).

    The one check a config passes before it runs (``run_config``, ``run_sweep``, ``sweep --dry-run``): every field's
    type and value, and a model name that can be loaded. ValueError naming the field otherwise.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a mapping of settings, got {config!r} ({type(config).__name__}); "
                         "e.g. {'model': 'embedded-gpt2', 'strategy': 'random'}")  # fmt: skip
    experiment, extra = ExperimentConfig.from_dict(config)  # the model name too (check_model_name)
    _check_extra(extra)
    return experiment, extra


def _check_extra(extra: Mapping[str, Any]) -> None:
    """Raise ValueError when an extra config key would share a runs.csv column with a metric of ``run_metrics``."""
    taken = sorted(set(flatten({str(key): value for key, value in extra.items()})) & set(METRIC_NAMES))
    if taken:
        raise ValueError(f"config key(s) {taken} are metric names the run records in runs.csv; rename them, "
                         f"e.g. 'my_{taken[0]}'")  # fmt: skip


def plan_sweep(base: Mapping[str, Any], sweep: Any) -> tuple[Any, list[tuple[ExperimentConfig, dict[str, Any]]]]:
    """Expand ``sweep`` over ``base`` and check every run config; return the loaded sweep and ``(config, extra)`` pairs.

    What ``run_sweep`` runs and ``python -m colab_helpers sweep --dry-run`` lists: the same configs, the same check.
    """
    from .sweep_config import expand, load_sweep

    sweep_config = load_sweep(sweep)
    pairs: list[tuple[ExperimentConfig, dict[str, Any]]] = []  # the validate hook builds each config, once
    expand(base, sweep_config, validate=lambda config: pairs.append(check_run_config(config)))
    return sweep_config, pairs


def run_config(config: Mapping[str, Any], root: str | os.PathLike[str] = "results/runs") -> Any:
    """Run one YAML-style config (ExperimentConfig keys; extra keys are tracked) as a tracked run.

    Returns the runs table of sweep ``single`` (see :meth:`Sweep.run_configs`).
    """
    experiment, extra = check_run_config(config)
    return Sweep(root).run_configs([experiment], sweep="single", extras=[extra])


def run_sweep(base: Mapping[str, Any], sweep: Any, root: str | os.PathLike[str] = "results/sweeps",
              max_runtime: float | None = None) -> Any:  # fmt: skip
    """Expand ``sweep`` over ``base`` (see :mod:`colab_helpers.experiments.sweep_config`) and run it; return the runs table.

    Every expanded config is validated (:func:`plan_sweep`) before the first run starts.
    """
    sweep_config, pairs = plan_sweep(base, sweep)
    name = getattr(sweep_config, "name", None) or DEFAULT_SWEEP
    return Sweep(root).run_configs([p[0] for p in pairs], sweep=name, extras=[p[1] for p in pairs], max_runtime=max_runtime)


__all__ = [
    "METRIC_NAMES",
    "Sweep",
    "check_run_config",
    "plan_sweep",
    "run_config",
    "run_metrics",
    "run_sweep",
]
