"""The prune-then-recover pipeline: baseline -> head importance -> prune -> LoRA fine-tune -> compare.

``PruningExperiment(results_dir).run_single_experiment(model=..., strategy=..., pruning_level=..., ...)`` runs
one pipeline and returns a dict with ``stages`` ``baseline``, ``pruned`` and ``fine_tuned`` (perplexity, a
generation for the prompt, parameter count, latency per token, seconds spent), serialized as JSON under
``results_dir``. With ``target_params`` the prune step is :func:`~colab_helpers.pruning.compress.compress`
(heads, MLP channels and layers to a parameter share; its report is ``result["pruning"]``); with
``recovery_method="distill"`` the LoRA step distils the unpruned model (:func:`~colab_helpers.finetune.distill`).
Sweeps over strategies x levels x models live in :mod:`colab_helpers.experiments.sweep`.

About 470 lines, in one module because the stages share the experiment's caches (loaded models, data, scores,
compressed models, baselines) and one result layout that the comparison, recovery and generation tables read;
measurement and the recovery metric, which stand alone, are the two functions at the top.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text, check_creatable_dir, ensure_writable_dir
from ..runtime.records import save_results
from .config import STAGES, ExperimentConfig

logger = logging.getLogger(__name__)

# --- measurement --------------------------------------------------------------------------------------


def measure_stage(model: Any, tokenizer: Any, texts: list[str], config: ExperimentConfig, *, progress: bool = False) -> dict[str, Any]:
    """Return perplexity, a greedy generation for the prompt and the parameter count of ``model``.

    Latency is not measured here: one model timed alone is noise on a shared machine; the pipeline times all
    stages together at the end (:func:`colab_helpers.evaluation.latency.generation_latency`).
    """
    from ..evaluation.perplexity import perplexity
    from ..runtime.cuda_fallback import safe_generate
    from ..runtime.modules import parameter_count

    started = time.perf_counter()
    ppl = perplexity(model, tokenizer, texts, seq_len=config.seq_len, stride=config.eval_stride or config.seq_len,
                     max_tokens=config.eval_tokens, progress=progress)  # fmt: skip
    generation = safe_generate(model, tokenizer, config.prompt, do_sample=False, max_new_tokens=config.max_new_tokens)
    return {
        "perplexity": ppl.perplexity,
        "eval_tokens": ppl.tokens,
        "generation": generation.text,
        "generation_path": generation.path,
        "parameters": parameter_count(model),
        "weights_mb": weights_bytes(model) / 1e6,
        "seconds": time.perf_counter() - started,
    }


def weights_bytes(model: Any) -> int:
    """Bytes of the model's distinct weights and buffers as saved (tied weights once; LoRA adapters included): the
    size of its safetensors files, give or take their headers."""
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def recovery(baseline: float, pruned: float, fine_tuned: float) -> float | None:
    """Return the share of the perplexity lost to pruning that fine-tuning won back (None when nothing was lost).

    1.0 = back to the baseline; above 1.0 = better than the unpruned model (fine-tuning also trains it further).
    """
    lost = pruned - baseline
    if not math.isfinite(lost) or lost <= 1e-9 * max(baseline, 1.0):
        return None
    return (pruned - fine_tuned) / lost


# --- the experiment -----------------------------------------------------------------------------------


class PruningExperiment:
    """Run prune-then-fine-tune pipelines and keep their results under ``results_dir``.

    Loaded models, data, importance scores and compressed models are cached per experiment object, so several
    runs on one model (a sweep over levels; one compression recovered two ways) load, score and compress it once.
    """

    def __init__(self, results_dir: str | os.PathLike[str] = "results/pipeline", *, progress: bool = True, live_plot: bool = True) -> None:
        self.results_dir = ensure_writable_dir(results_dir)
        self.progress = progress
        self.live_plot = live_plot
        self.results: list[dict[str, Any]] = []
        self._models: dict[str, tuple[Any, Any]] = {}
        self._data: dict[str, Any] = {}
        self._scores: dict[tuple[str, str, int, int, int], Any] = {}
        self._baselines: dict[tuple[str, ...], dict[str, Any]] = {}
        self._compressed: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
        self._histories: dict[str, Any] = {}

    # --- cached inputs --------------------------------------------------------------------------------

    def _model(self, config: ExperimentConfig) -> tuple[Any, Any]:
        """Return a fresh copy of the config's model (the loaded original stays untouched) and its tokenizer."""
        from ..models.loading import load_model

        key = self._model_key(config)
        if key not in self._models:
            self._models[key] = load_model(config.model, dtype=config.dtype, load_in_4bit=config.load_in_4bit)
        model, tokenizer = self._models[key]
        return copy.deepcopy(model), tokenizer

    @staticmethod
    def _model_key(config: ExperimentConfig) -> str:
        return f"{config.model}|{config.dtype}|{'4bit' if config.load_in_4bit else 'full'}"

    def _dataset(self, name: str) -> Any:
        from ..evaluation.data import load_text_dataset

        if name not in self._data:
            self._data[name] = load_text_dataset(name)
        return self._data[name]

    @staticmethod
    def _calibration_batches(model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> list[Any]:
        """Return up to ``importance_batches`` batches of 8 training sequences of ``seq_len`` tokens (scoring input)."""
        from ..evaluation.perplexity import lm_batches, model_vocab_size, tokenize_texts

        batch_size = 8
        ids = tokenize_texts(tokenizer, data.train, max_tokens=config.importance_batches * batch_size * config.seq_len)
        return list(lm_batches(ids, seq_len=config.seq_len, batch_size=batch_size, max_batches=config.importance_batches,
                               vocab_size=model_vocab_size(model)))  # fmt: skip

    def _importance(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> Any:
        from ..pruning import head_importance

        key = (config.model, config.strategy, config.seed, config.seq_len, config.importance_batches)
        if key not in self._scores:
            batches = self._calibration_batches(model, tokenizer, data, config)
            self._scores[key] = head_importance(model, batches, config.strategy, seed=config.seed, progress=self.progress)
        return self._scores[key]

    # --- one run --------------------------------------------------------------------------------------

    def run_single_experiment(self, model: str = "auto", strategy: str = "gradient", pruning_level: float = 0.3,
                              prompt: str | None = None, fine_tuning_epochs: float | None = None,
                              fine_tuning_steps: int | None = None, *, smoke: bool = False,
                              output_dir: str | os.PathLike[str] | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
        """Run baseline -> prune -> fine-tune for one model, strategy and level; return the result dict.

        The seed notebook's keyword API, kept as a thin front: it builds an :class:`ExperimentConfig` and calls
        :meth:`run`, the one entry point. ``options`` are further :class:`ExperimentConfig` fields
        (``learning_rate``, ``seq_len``, ...); ``smoke=True`` shrinks everything to seconds. The result
        (``config``, ``stages``, ``pruning``, ``training``, ``recovery``, ``seconds``) is also written to
        ``<output_dir>/result.json`` (default ``results_dir/<run name>``).
        """
        settings = dict(model=model, strategy=strategy, pruning_level=pruning_level,
                        fine_tuning_epochs=fine_tuning_epochs, fine_tuning_steps=fine_tuning_steps, **options)  # fmt: skip
        if prompt is not None:
            settings["prompt"] = prompt
        config = ExperimentConfig(**settings)
        if smoke:
            config = config.smoke()
        return self.run(config, output_dir=output_dir)

    def run(self, config: ExperimentConfig, *, output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Run the pipeline for ``config`` (see :meth:`run_single_experiment`); return the result dict."""
        from ..models.loading import resolve_model_name
        from ..pruning import head_layout, remove_heads, select_heads
        from ..pruning.importance import resolve_normalization

        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}; "
                            "e.g. run(ExperimentConfig(model='embedded-gpt2')) or run_single_experiment(...)")  # fmt: skip
        started = time.perf_counter()
        config = dataclasses.replace(config, model=resolve_model_name(config.model))
        target = Path(output_dir).expanduser() if output_dir else self.results_dir / config.run_name()
        check_creatable_dir(target, what="output_dir")
        # every input is checked (and loaded: both are cached) before the run folder exists, so a bad model,
        # dataset or architecture leaves nothing behind
        data = self._dataset(config.dataset)
        model, tokenizer = self._model(config)
        head_layout(model)  # an architecture pruning cannot handle fails here, not after the baseline
        if config.target_params is not None:
            from ..pruning.compress import check_axes

            check_axes(model, config.axes)  # an axis this model cannot lose fails here too
        out = ensure_writable_dir(target)
        stages: dict[str, dict[str, Any]] = {}
        baseline_key = (self._model_key(config), config.dataset, config.prompt, config.seq_len, config.eval_tokens,
                        config.eval_stride, config.max_new_tokens)  # fmt: skip
        if baseline_key not in self._baselines:
            self._baselines[baseline_key] = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        stages["baseline"] = dict(self._baselines[baseline_key])

        pruning_started = time.perf_counter()
        pruned_copy = None  # the pruned model as it was before fine-tuning, kept for the latency comparison
        gates = None
        if config.target_params is not None:  # across heads, MLP channels and layers, to a parameter share
            model, pruning = self._compress(model, tokenizer, data, config)
            pruned_copy = copy.deepcopy(model)
        else:  # attention heads by pruning_level
            scores = self._importance(model, tokenizer, data, config)
            mask = select_heads(scores, config.pruning_level, scope=config.scope)
            pruning = {"method": "heads", "heads_pruned": int(mask.sum()), "mask": mask.int().tolist(),
                       "scores": scores.tolist(), "normalization": resolve_normalization("auto", config.strategy)}  # fmt: skip
            if config.remove_heads and mask.any():
                pruning["report"] = remove_heads(model, mask).to_dict()
                pruned_copy = copy.deepcopy(model)
            else:
                from ..pruning import gate_heads

                gates = gate_heads(model, mask)  # kept for fine-tuning: LoRA leaves gated projections alone
        stages["pruned"] = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        stages["pruned"]["seconds"] = time.perf_counter() - pruning_started  # scoring + pruning + measuring

        training, model = self._fine_tune(model, tokenizer, data, config, out / "finetune")
        stages["fine_tuned"] = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        stages["fine_tuned"]["seconds"] += training.get("seconds", 0.0)
        self._add_latency(stages, config, tokenizer, model, pruned_copy)
        del pruned_copy
        model_dir = None
        if config.save_model:
            from ..pruning import save_pruned

            if gates is not None:
                logger.info("save_model: the model is only gated (remove_heads=False); saving the unpruned weights")
            model_dir = save_pruned(model, tokenizer, out / "model")
        if gates is not None:
            gates.remove()
        result = {
            "name": config.run_name(),
            "config": config.to_dict(),
            "stages": stages,
            "pruning": pruning,
            "training": training,
            "recovery": recovery(stages["baseline"]["perplexity"], stages["pruned"]["perplexity"],
                                 stages["fine_tuned"]["perplexity"]),
            "seconds": time.perf_counter() - started,
            "output_dir": str(out),
            "model_dir": str(model_dir) if model_dir is not None else None,
        }  # fmt: skip
        if config.control and (config.steps or config.fine_tuning_epochs):
            del model  # the control needs its own copy: free this one first
            result["control"] = self._control(config, data, out / "control")
            result["seconds"] = time.perf_counter() - started
        save_results(out, result=result)
        self.results.append(result)
        logger.info("%s: perplexity %.1f -> %.1f -> %.1f", config.run_name(),
                    *(stages[s]["perplexity"] for s in STAGES))  # fmt: skip
        return result

    def _compress(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> tuple[Any, dict[str, Any]]:
        """Compress ``model`` in place to ``config.target_params`` across ``config.axes``; return it and the pruning
        record. A compression done before with the same settings is reused (a copy of the model it gave).

        The calibration batches are those head importance reads (``importance_batches`` of 8 x ``seq_len``): the
        first half scores the units, the rest compares the candidate allocations (all of them when there is one).
        The record is :meth:`CompressReport.to_dict` plus ``method`` and ``heads_pruned`` (heads gone, those of
        removed layers included), the keys every result carries.
        """
        from ..pruning.compress import compress

        key = (self._model_key(config), config.dataset, config.target_params, config.axes, config.seq_len,
               config.importance_batches)  # fmt: skip
        if key in self._compressed:  # e.g. the same compression recovered two ways: compress it once
            compressed, record = self._compressed[key]
            logger.info("reusing the compressed model of an earlier run with the same settings")
            return copy.deepcopy(compressed), copy.deepcopy(record)
        batches = self._calibration_batches(model, tokenizer, data, config)
        half = (len(batches) + 1) // 2
        scoring, evaluation = (batches[:half], batches[half:]) if len(batches) >= 2 else (batches, None)
        report = compress(model, scoring, config.target_params, config.axes, eval_batches=evaluation,
                          progress=self.progress)  # fmt: skip
        logger.info("%s", report.summary())
        record = {"method": "compress", "heads_pruned": sum(report.heads_before) - sum(report.heads_after),
                  **report.to_dict()}  # fmt: skip
        self._compressed[key] = (copy.deepcopy(model), record)
        return model, record

    def _add_latency(self, stages: dict[str, dict[str, Any]], config: ExperimentConfig, tokenizer: Any,
                     fine_tuned: Any, pruned: Any | None) -> None:  # fmt: skip
        """Time every stage's model together (interleaved rounds, medians) and add latency and speed-up to ``stages``."""
        from ..evaluation.latency import generation_latency, speedup

        models = {"baseline": self._models[self._model_key(config)][0], "pruned": pruned, "fine_tuned": fine_tuned}
        timed = {name: model for name, model in models.items() if model is not None}
        reports = generation_latency(timed, tokenizer, config.prompt, rounds=config.latency_rounds)
        if "pruned" not in reports:  # only gated: the pruned model has the fine-tuned one's shape and gates
            reports["pruned"] = reports["fine_tuned"]
        for name, report in reports.items():
            stages[name]["latency_ms_per_token"] = report.ms_per_token
            stages[name]["cpu_ms_per_token"] = report.cpu_ms_per_token
            stages[name]["speedup"] = speedup(reports["baseline"], report)
            stages[name]["latency"] = report.to_dict()

    def _fine_tune(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig, out: Path,
                   *, control: bool = False) -> tuple[dict[str, Any], Any]:  # fmt: skip
        """LoRA fine-tune ``model`` (on the LM loss, or distilled from the unpruned model with
        ``recovery_method='distill'``; the control always on the LM loss); return the training summary and the
        merged plain model."""
        method = "lora" if control else config.recovery_method
        if config.steps == 0:
            return {"steps": 0, "seconds": 0.0, "recovery_method": method}, model
        from ..finetune import merge_adapter

        ft_config = config.finetune_config(out, control=control)
        if method == "distill":
            result = self._distill(model, tokenizer, data, config, ft_config)
        else:
            from ..finetune import fine_tune

            result = fine_tune(model, tokenizer, data.train, data.validation, ft_config, live_plot=self.live_plot,
                               progress=self.progress)  # fmt: skip
        result.raise_if_failed()  # a NaN model is no result to measure
        history = result.history_frame()
        history_path = out / "history.csv"
        atomic_write_text(history_path, history.to_csv())
        self._histories[config.run_name() + (" control" if control else "")] = history
        summary = {
            "steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
            "best_step": result.best_step, "best_eval_loss": result.best_eval_loss, "stopped": result.stopped_reason,
            "device": result.device, "backend": result.backend, "dtype": ft_config.dtype,
            "load_in_4bit": ft_config.load_in_4bit, "events": len(result.events),
            "event_kinds": sorted({event["kind"] for event in result.events}),
            "history_path": str(history_path), "plot_path": str(result.plot_path) if result.plot_path else None,
            "recovery_method": method,
        }  # fmt: skip
        if method == "distill":  # what was done: a live teacher, or its top-k logits precomputed to disk
            summary["distill"] = config.distill_config(Path(ft_config.output_dir) / "teacher_cache").to_dict()
        return summary, merge_adapter(result.model)

    def _distill(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig, ft_config: Any) -> Any:
        """Distil the unpruned model (the cached original, lent as the frozen teacher) into ``model``; return the
        fine-tuning result. ``distill`` freezes its teacher: the original's training mode and ``requires_grad``
        flags are put back afterwards, since later runs copy it."""
        from ..finetune import distill

        teacher = self._models[self._model_key(config)][0]
        was_training = teacher.training
        trainable = [param.requires_grad for param in teacher.parameters()]
        try:
            settings = config.distill_config(Path(ft_config.output_dir) / "teacher_cache")
            return distill(model, teacher, tokenizer, data.train, data.validation, ft_config, settings,
                           live_plot=self.live_plot, progress=self.progress)  # fmt: skip
        finally:
            teacher.train(was_training)
            for param, flag in zip(teacher.parameters(), trainable):
                param.requires_grad_(flag)

    def _control(self, config: ExperimentConfig, data: Any, out: Path) -> dict[str, Any]:
        """Fine-tune the unpruned model for the same steps: separates 'recovery' from 'more training'."""
        model, tokenizer = self._model(config)
        training, model = self._fine_tune(model, tokenizer, data, config, out, control=True)
        stage = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        return {**stage, "seconds": stage["seconds"] + training.get("seconds", 0.0), "training": training}

    # --- results --------------------------------------------------------------------------------------

    def comparison(self, result: dict[str, Any] | None = None) -> Any:
        """Return a table of one run's stages (default: the last run), with the control when it ran.

        Columns: perplexity and its change against the baseline, parameters, size of the weights as saved (MB),
        median latency per generated token (wall) and the speed-up against the baseline (CPU time on a CPU), and the seconds each stage took.
        """
        import pandas as pd

        result = result or self._last()
        stages = {stage.replace("_", "-"): result["stages"][stage] for stage in STAGES}
        if "control" in result:
            stages["control (unpruned, fine-tuned)"] = result["control"]
        baseline = result["stages"]["baseline"]["perplexity"]
        rows = {
            name: {
                "perplexity": stage["perplexity"],
                "vs baseline": f"{stage['perplexity'] / baseline - 1:+.1%}",
                "parameters": stage["parameters"],
                "weights MB": stage.get("weights_mb", math.nan),
                "ms / token": stage.get("latency_ms_per_token", math.nan),
                "speed-up": stage.get("speedup", math.nan),
                "seconds": stage["seconds"],
            }
            for name, stage in stages.items()
        }
        table = pd.DataFrame(rows).T
        table = table.astype({"perplexity": float, "parameters": int, "weights MB": float, "ms / token": float,
                              "speed-up": float, "seconds": float})  # fmt: skip
        return table.round({"perplexity": 2, "weights MB": 1, "ms / token": 1, "speed-up": 3, "seconds": 1})

    def recovery_table(self, result: dict[str, Any] | None = None) -> Any:
        """Return what pruning cost and fine-tuning won back, read against the control when it ran.

        Fine-tuning on text of the evaluation's domain lowers perplexity by itself, so a share recovered above 1
        is not a better model than the unpruned one: the control (the unpruned model fine-tuned as long on the
        same text) is the fair reference, and ``pruned + fine-tuned vs control`` is what pruning still costs.
        """
        import pandas as pd

        result = result or self._last()
        ppl = {stage: result["stages"][stage]["perplexity"] for stage in STAGES}
        rows: dict[str, Any] = {
            "unpruned": f"{ppl['baseline']:.2f}",
            "pruned": f"{ppl['pruned']:.2f} ({ppl['pruned'] / ppl['baseline'] - 1:+.1%})",
            "pruned + fine-tuned": f"{ppl['fine_tuned']:.2f}",
            "share of the loss won back": _share(result["recovery"]),
        }
        if "control" in result:
            control = result["control"]["perplexity"]
            rows["control: unpruned + fine-tuned as long"] = f"{control:.2f}"
            rows["pruned + fine-tuned vs control"] = f"{ppl['fine_tuned'] / control - 1:+.1%} (what pruning still costs)"
        return pd.DataFrame({"value": rows})

    def generations(self, result: dict[str, Any] | None = None) -> Any:
        """Return the prompt's generation at each stage (and the control's) as a table."""
        import pandas as pd

        result = result or self._last()
        prompt = result["config"]["prompt"]
        texts = {stage.replace("_", "-"): prompt + result["stages"][stage]["generation"] for stage in STAGES}
        if "generation" in result.get("control", {}):
            texts["control"] = prompt + result["control"]["generation"]
        return pd.DataFrame({"generation": texts})

    def history(self, result: dict[str, Any] | None = None) -> Any:
        """Return the training history (a DataFrame by step: ``loss``, ``eval_loss``, and for distillation
        ``kd_loss`` / ``lm_loss``) of one run (default: the last), from memory or its ``history.csv``."""
        import pandas as pd

        result = result or self._last()
        if result["name"] not in self._histories:
            path = Path(result.get("training", {}).get("history_path") or "")
            if not path.is_file():
                raise ValueError(f"run {result['name']!r} has no training history (it trained no steps, or its "
                                 "history.csv was moved)")  # fmt: skip
            self._histories[result["name"]] = pd.read_csv(path, index_col=0)
        return self._histories[result["name"]]

    def load_result(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Read a saved run (its ``result.json``, or the run folder) back, with its training histories, so that
        :meth:`comparison`, :meth:`recovery_table`, :meth:`generations` and :meth:`plot_results` show it again
        (after a disconnect, or to write a report from a finished run). Returns the result dict."""
        import json

        import pandas as pd

        source = Path(path).expanduser()
        source = source / "result.json" if source.is_dir() else source
        if not source.is_file():
            raise FileNotFoundError(f"no saved run at {str(source)!r}: pass a run folder or its result.json")
        result = json.loads(source.read_text(encoding="utf-8"))
        if not isinstance(result, dict) or "stages" not in result or "name" not in result:
            raise ValueError(f"{str(source)!r} is not a pipeline result (no 'stages'); pass the result.json of a run")
        for suffix, training in (("", result.get("training", {})), (" control", result.get("control", {}).get("training", {}))):
            history = Path(training.get("history_path") or "")
            if history.is_file():
                self._histories[result["name"] + suffix] = pd.read_csv(history, index_col=0)
        self.results.append(result)
        return result

    def _last(self) -> dict[str, Any]:
        if not self.results:
            raise ValueError("no results yet: call run_single_experiment(...) first")
        return self.results[-1]

    def plot_results(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Draw perplexity per stage for every run and the training curves; save to ``path`` (PNG).

        Stages are points joined per run on an axis that starts near the data (a 1% change is visible; the
        axis is labelled so it is not read as starting at 0); the control is drawn as a separate point.
        """
        from ..plots.base import new_figure
        from ..plots.pruning import plot_stage_perplexity
        from ..plots.training import plot_loss_curves

        if not self.results:
            raise ValueError("no results yet: call run_single_experiment(...) first")
        figure = new_figure(11, 3.8)
        stages_ax, curves = figure.subplots(1, 2)
        plot_stage_perplexity(stages_ax, self.results, STAGES)
        plot_loss_curves(curves, self._histories, title="LoRA: training curves")
        figure.save(path or self.results_dir / "results.png")
        return figure


def _share(value: float | None) -> str:
    """A recovery share in words: 'nothing was lost', or a percentage, flagged above 100%."""
    if value is None:
        return "nothing was lost"
    note = " (beyond the unpruned model: compare with the control)" if value > 1 else ""
    return f"{value:.0%}{note}"
