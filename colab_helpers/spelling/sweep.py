"""The tracked study: :class:`SpellingStudy` measures the baseline and the controls, runs the sweep, analyses it.

Every run (the untouched model's *baseline*, each *control* adapter trained on plain text, each LoRA run on
spelling) is recorded in ``runs.csv`` through :class:`~colab_helpers.experiments.tracking.RunManager`; a run already
``done`` is reused, so a sweep restarted after a disconnect continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import ensure_writable_dir
from .analysis import analyze, paired_gains
from .config import (
    CONTROL_MODES,
    METRICS,
    MIN_SPELLING_GAIN,
    REFERENCE_SWEEP,
    base_config,
    check_sweep,
    default_sweep,
    merge_steps,
)
from .data import fingerprint
from .evaluation import Evaluation, evaluate, save_predictions, transfer_metrics
from .questions import TASKS
from .report import TransferAnalysis
from .training import completion_pairs, control_texts, train_and_evaluate

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

logger = logging.getLogger(__name__)


class SpellingStudy:
    """Baseline, control and a LoRA sweep on spelling, evaluated on all three tasks, tracked in ``runs.csv``.

    ``model`` stays untouched: every run trains a deep copy (on GPU this needs room for two copies; a 4-bit
    model cannot be copied, load it unquantized). ``data`` comes from
    :func:`colab_helpers.spelling.data.build_datasets`; accuracies are measured on ``eval_split``, early
    stopping on the validation loss (of the answers only, with ``training.completion_only``). ``control`` is
    ``"per_steps"`` (one control adapter per step count, with the base config's other settings), ``"per_run"``
    (one per run, its exact settings: twice the cost) or ``"none"``. ``keep_adapters=False`` deletes each run's
    adapter and checkpoints once it is recorded.
    """

    def __init__(self, model: Any, tokenizer: Any, data: datasets.DatasetDict,
                 results_dir: str | Path = "results/spelling", *, model_name: str | None = None,
                 eval_split: str = "test", batch_size: int = 32, n_boot: int = 1000, control: str = "per_steps",
                 min_spelling_gain: float = MIN_SPELLING_GAIN, keep_adapters: bool = False, progress: bool = True,
                 live_plot: bool = True, mirror: str | None = None, seed: int = 0) -> None:  # fmt: skip
        from ..experiments.tracking import RunManager

        if control not in CONTROL_MODES:
            raise ValueError(f"control must be one of {list(CONTROL_MODES)}, got {control!r}")
        if eval_split not in data:
            raise ValueError(f"eval_split {eval_split!r} is not in the data (splits: {list(data)})")
        missing = [t for t in TASKS if t not in set(data[eval_split]["task"])]
        if missing:
            raise ValueError(f"the {eval_split} split has no rows of {missing}; build it with eval_tasks={list(TASKS)}")
        self.model, self.tokenizer, self.data = model, tokenizer, data
        self.model_name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model")
        self.results_dir = ensure_writable_dir(results_dir)
        self.manager = RunManager(self.results_dir, mirror=mirror)
        self.eval_split, self.batch_size, self.n_boot, self.seed = eval_split, batch_size, n_boot, seed
        self.control_mode, self.min_spelling_gain, self.keep_adapters = control, min_spelling_gain, keep_adapters
        self.progress, self.live_plot = progress, live_plot
        self.data_fingerprint = fingerprint(data)
        train_tasks = sorted(set(data["train"]["task"]))
        self.train_texts = list(data["train"]["text"])
        self.eval_texts = [row["text"] for row in data["validation"] if row["task"] in train_tasks]
        self.train_pairs = completion_pairs(data["train"])  # training.completion_only: loss on the answer only
        self.eval_pairs = completion_pairs(row for row in data["validation"] if row["task"] in train_tasks)
        self.base: dict[str, Any] = base_config(self.model_name)
        self.sweep_name: str | None = None

    def __repr__(self) -> str:
        return f"SpellingStudy({self.model_name!r}, data {self.data_fingerprint}, results {str(self.results_dir)!r})"

    # -- references -----------------------------------------------------------------------------------

    def _eval_record(self) -> dict[str, Any]:
        return {"data": self.data_fingerprint, "split": self.eval_split, "n_boot": self.n_boot, "seed": self.seed}

    def evaluate(self, model: Any) -> Evaluation:
        """Return the :class:`Evaluation` of ``model`` on the study's evaluation split."""
        return evaluate(model, self.tokenizer, self.data[self.eval_split], batch_size=self.batch_size,
                        n_boot=self.n_boot, seed=self.seed)  # fmt: skip

    def _reference(self, record: dict[str, Any], produce: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Return the metrics of reference run ``record`` (recorded once under sweep "reference", then reused)."""
        start = self.manager.start_or_skip(record, sweep=REFERENCE_SWEEP)
        if start.run is None:  # done earlier: its row holds the metrics
            return {**start.row, "run_id": start.run_id}
        run = start.run
        try:
            metrics = produce(run.path)
        except BaseException as exc:
            run.finish("failed", error=exc)
            raise
        run.update_metrics(metrics)
        run.finish("done")
        return {**metrics, "run_id": run.run_id}

    def baseline(self) -> dict[str, Any]:
        """Return the zero-shot metrics of the untouched model (``<task>_accuracy``, intervals, ``run_id``)."""
        record = {"kind": "baseline", "model": self.model_name, "eval": self._eval_record()}

        def produce(path: Path) -> dict[str, Any]:
            evaluation = self.evaluate(self.model)
            save_predictions(path, evaluation)
            return {**evaluation.metrics(), "eval_seconds": evaluation.seconds}

        return self._reference(record, produce)

    def control(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Return the metrics of the control adapter for run ``config`` (plain text, same steps); None if off."""
        if self.control_mode == "none":
            return None
        settings = config if self.control_mode == "per_run" else merge_steps(self.base, config)
        # plain text whatever completion_only says: left out of the record, so runs that differ only there share it
        training = {k: v for k, v in settings["training"].items() if k != "completion_only"}
        record = {"kind": "control", "model": self.model_name, "lora": settings["lora"], "training": training,
                  "eval": self._eval_record()}  # fmt: skip

        def produce(path: Path) -> dict[str, Any]:
            return self._train_and_evaluate(settings, path, control_texts(settings["training"]), None)

        return self._reference(record, produce)

    # -- runs -----------------------------------------------------------------------------------------

    def _train_and_evaluate(self, config: Mapping[str, Any], path: Path, train_texts: Sequence[Any],
                            eval_texts: Sequence[Any] | None) -> dict[str, Any]:  # fmt: skip
        """Train a copy of the model on ``train_texts`` under run ``config``; return its metrics."""
        return train_and_evaluate(self.model, self.tokenizer, config, path, train_texts, eval_texts,
                                  evaluate=self.evaluate, progress=self.progress,
                                  keep_adapters=self.keep_adapters)  # fmt: skip

    def run_one(self, config: Mapping[str, Any], *, sweep: str | None = None, baseline: Mapping[str, Any] | None = None
                ) -> tuple[str, str]:  # fmt: skip
        """Run (or skip, when already done) one tracked sweep run; return ``(run_id, status)``.

        Without ``baseline``, the baseline's metrics are looked up first (measured once, when not recorded yet).
        """
        sweep = sweep or self.sweep_name or "spelling"
        baseline = baseline if baseline is not None else self.baseline()
        start = self.manager.start_or_skip({**config, "eval": self._eval_record()}, sweep=sweep)
        if start.run is None:
            return start.run_id, "skipped"
        run = start.run
        try:
            control = self.control(config)
            pairs = config["training"].get("completion_only", False)
            train, evals = (self.train_pairs, self.eval_pairs) if pairs else (self.train_texts, self.eval_texts)
            metrics = self._train_and_evaluate(config, run.path, train, evals)
            metrics.update(transfer_metrics(metrics, baseline, control, min_spelling_gain=self.min_spelling_gain))
            metrics.update(baseline_run_id=baseline["run_id"], control_run_id=control["run_id"] if control else None)
            run.update_metrics(metrics)
        except Exception as exc:  # noqa: BLE001 - one failed run is recorded; the sweep goes on
            logger.warning("run %s failed: %s", run.run_id, exc)
            run.finish("failed", error=exc)
            return run.run_id, "failed"
        run.finish("done")
        return run.run_id, "done"

    def run_sweep(self, sweep: Any = None, base: Mapping[str, Any] | None = None, *,
                  max_runtime: float | None = None) -> pd.DataFrame:  # fmt: skip
        """Run every config of ``sweep`` (default :func:`default_sweep`) over ``base`` (default :func:`base_config`);
        return the sweep's runs table.

        Every config is checked before the first run; runs already ``done`` are skipped, so rerunning after a
        disconnect continues; a failing run is recorded ``failed`` and the sweep goes on; past ``max_runtime``
        seconds the remaining runs are recorded ``skipped``. Progress: a bar and a live plot of the accuracies.
        """
        from tqdm.auto import tqdm

        from ..experiments.sweep_config import load_sweep

        sweep_config = load_sweep(sweep if sweep is not None else default_sweep())
        self.base = dict(base) if base is not None else base_config(self.model_name)
        self.base["model"] = self.model_name
        configs = check_sweep(self.base, sweep_config)
        self.sweep_name = sweep_config.name
        baseline = self.baseline()
        plot = self._live_plot(baseline)
        started = time.monotonic()
        counts = {"done": 0, "skipped": 0, "failed": 0}
        bar = tqdm(total=len(configs), desc=f"sweep {sweep_config.name}", unit="run", disable=not self.progress)
        try:
            for index, config in enumerate(configs):
                if max_runtime is not None and time.monotonic() - started > max_runtime:
                    self._skip(config, sweep_config.name, max_runtime)
                    counts["skipped"] += 1
                else:
                    run_id, status = self.run_one(config, sweep=sweep_config.name, baseline=baseline)
                    counts[status] += 1
                    if plot is not None and status in ("done", "skipped"):
                        row = self.manager.get(run_id)
                        plot.update(index + 1, {m: row[m] for m in METRICS[:3] if isinstance(row.get(m), int | float)})
                bar.update(1)
                bar.set_postfix(counts)
        finally:
            bar.close()
            if plot is not None:
                plot.close()
        return self.runs()

    def _skip(self, config: Mapping[str, Any], sweep: str, max_runtime: float) -> None:
        run = self.manager.start_or_skip({**config, "eval": self._eval_record()}, sweep=sweep).run
        if run is not None:  # not done yet: recorded as skipped
            run.finish("skipped", error=f"max_runtime of {max_runtime:g} s reached before this run started")

    def _live_plot(self, baseline: Mapping[str, Any]) -> Any:
        if not self.live_plot:
            return None
        from ..plots.live import LivePlot

        plot = LivePlot([tuple(METRICS[:3])], title="Spelling sweep: accuracy per run", xlabel="run",
                        path=self.results_dir / "sweep_progress.png", min_interval=0.5)  # fmt: skip
        plot.update(0, {m: baseline[m] for m in METRICS[:3]})  # run 0: the untouched model
        return plot

    def runs(self, sweep: str | None = None) -> pd.DataFrame:
        """Return the runs of ``sweep`` (default: the last sweep run) as a DataFrame."""
        return self.manager.runs(sweep=sweep or self.sweep_name)

    def predictions(self, run_id: str) -> pd.DataFrame:
        """Return the evaluation answers of run ``run_id`` (a sweep run, the baseline or a control)."""
        import pandas as pd

        path = self.manager.run_dir(run_id) / "predictions.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"run {run_id!r} has no predictions.jsonl (it did not finish its evaluation)")
        return pd.read_json(path, lines=True)

    def gains(self, run_id: str, reference_run_id: str) -> pd.DataFrame:
        """Return the per-task gain of run ``run_id`` over run ``reference_run_id`` (the baseline's or a control's
        ``run_id``) on the same test questions, with paired bootstrap 95% intervals (see :func:`paired_gains`)."""
        return paired_gains(self.predictions(run_id), self.predictions(reference_run_id), n_boot=self.n_boot,
                            seed=self.seed)  # fmt: skip

    def references(self) -> pd.DataFrame:
        """Return the baseline and control runs (sweep ``"reference"``)."""
        return self.manager.runs(sweep=REFERENCE_SWEEP)

    def analyze(self, sweep: str | None = None, *, n_boot: int = 2000) -> TransferAnalysis:
        """Return the :class:`TransferAnalysis` of the sweep's finished runs against baseline and controls."""
        references = self.references()
        done = references[references["status"] == "done"] if len(references) else references
        baseline = done[done["kind"] == "baseline"] if "kind" in done else done.iloc[0:0]
        return analyze(self.runs(sweep), baseline=baseline.iloc[-1].to_dict() if len(baseline) else None,
                       controls=done[done["kind"] == "control"] if "kind" in done else None, n_boot=n_boot,
                       seed=self.seed, title=f"Spelling transfer: {self.model_name}")  # fmt: skip
