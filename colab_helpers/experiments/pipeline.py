"""The prune-then-recover pipeline: baseline -> head importance -> prune -> LoRA fine-tune -> compare.

``PruningExperiment(results_dir).run_single_experiment(model=..., strategy=..., pruning_level=..., ...)`` runs
one pipeline and returns a dict with ``stages`` ``baseline``, ``pruned`` and ``fine_tuned`` (perplexity, a
generation for the prompt, parameter count, latency per token, seconds spent), serialized as JSON under
``results_dir``. Sweeps over strategies x levels x models live in :mod:`colab_helpers.experiments.sweep`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text, ensure_writable_dir
from ..runtime.records import save_results

logger = logging.getLogger(__name__)

STAGES = ("baseline", "pruned", "fine_tuned")
PRUNING_STRATEGIES = ("random", "magnitude", "entropy", "gradient")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ExperimentConfig:
    """One prune-then-recover run. Every field has a default; ``smoke()`` gives a seconds-long copy."""

    model: str = field(default="auto", metadata=_help("catalog or hub name, local path, 'embedded-gpt2', or 'auto'."))
    dataset: str = field(default="auto", metadata=_help("'auto', 'embedded' or a hub dataset such as 'wikitext-2-raw-v1'."))
    strategy: str = field(default="gradient", metadata=_help("head importance: random, magnitude, entropy or gradient."))
    pruning_level: float = field(default=0.3, metadata=_help("fraction of attention heads to prune, in [0, 1)."))
    scope: str = field(default="global", metadata=_help("'global' (lowest heads anywhere) or 'layer' (same share per layer)."))
    remove_heads: bool = field(default=True, metadata=_help("slice pruned heads out (smaller, faster) or only gate them."))
    prompt: str = field(default="A hacker is", metadata=_help("prompt for the generation at each stage."))
    max_new_tokens: int = field(default=30, metadata=_help("tokens generated at each stage."))
    fine_tuning_steps: int | None = field(default=None, metadata=_help("LoRA optimizer steps (default 200 when epochs is None)."))
    fine_tuning_epochs: float | None = field(default=None, metadata=_help("passes over the training text; overrides steps."))
    learning_rate: float = field(default=1e-3, metadata=_help("peak LoRA learning rate."))
    lora_r: int = field(default=16, metadata=_help("LoRA rank."))
    lora_alpha: float = field(default=32, metadata=_help("LoRA alpha (scale alpha / r)."))
    micro_batch_size: int = field(default=8, metadata=_help("sequences per forward pass (halved on out-of-memory)."))
    seq_len: int = field(default=128, metadata=_help("tokens per sequence for scoring, training and perplexity."))
    eval_tokens: int = field(default=8192, metadata=_help("validation tokens scored per perplexity measurement (its cost)."))
    eval_stride: int | None = field(default=None, metadata=_help(
        "perplexity window step; None = seq_len (non-overlapping windows, each token scored once, cost = eval_tokens); "
        "a smaller stride gives every token more context at seq_len / stride times the cost."))
    importance_batches: int = field(default=8, metadata=_help("batches of 8 training sequences read by entropy / gradient."))
    latency_rounds: int = field(default=5, metadata=_help("interleaved timing rounds per model for latency per token (medians)."))
    seed: int = field(default=0, metadata=_help("seed of random scores, data sampling and LoRA."))
    control: bool = field(default=False, metadata=_help("also fine-tune the unpruned model for the same steps."))
    dtype: str = field(default="auto", metadata=_help(
        "weights and training precision: 'auto' (fp32 on a CPU, bf16 on GPUs of capability >= 8, else fp16), 'bf16', 'fp16', 'fp32'."))
    load_in_4bit: bool = field(default=False, metadata=_help(
        "QLoRA: load the model in 4 bits (CUDA + bitsandbytes); heads are then gated, not removed (set remove_heads=False)."))
    save_model: bool = field(default=False, metadata=_help("save the pruned, fine-tuned model (safetensors) as <run>/model."))

    def __post_init__(self) -> None:
        if self.strategy not in PRUNING_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(PRUNING_STRATEGIES)}, got {self.strategy!r}")
        if not isinstance(self.pruning_level, int | float) or not 0 <= self.pruning_level < 1:
            raise ValueError(f"pruning_level must be in [0, 1), got {self.pruning_level!r}; e.g. 0.3 for 30% of heads")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.fine_tuning_steps is not None and self.fine_tuning_epochs is not None:
            raise ValueError("give fine_tuning_steps or fine_tuning_epochs, not both; e.g. fine_tuning_steps=200")
        if self.fine_tuning_steps is not None and self.fine_tuning_steps < 0:
            raise ValueError(f"fine_tuning_steps must be >= 0 (0 skips fine-tuning), got {self.fine_tuning_steps}")
        if self.fine_tuning_epochs is not None and not self.fine_tuning_epochs > 0:
            raise ValueError(f"fine_tuning_epochs must be > 0, got {self.fine_tuning_epochs}")
        if self.eval_stride is not None and (not isinstance(self.eval_stride, int) or not 0 < self.eval_stride <= self.seq_len):
            raise ValueError(f"eval_stride must be an integer in [1, seq_len={self.seq_len}] or None, got {self.eval_stride!r}")
        for name in ("max_new_tokens", "lora_r", "micro_batch_size", "seq_len", "eval_tokens", "importance_batches",
                     "latency_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be 'auto', 'bf16', 'fp16' or 'fp32', got {self.dtype!r}")
        if self.load_in_4bit and self.remove_heads:
            raise ValueError("load_in_4bit=True cannot remove heads physically (4-bit weights cannot be sliced); "
                             "set remove_heads=False to gate the pruned heads instead")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; e.g. 1e-3")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> tuple[ExperimentConfig, dict[str, Any]]:
        """Return the config built from the known keys of ``config`` and a dict of the other keys (tracked, unused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {key: value for key, value in config.items() if key in names}
        extra = {key: value for key, value in config.items() if key not in names}
        return cls(**known), extra

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def smoke(self) -> ExperimentConfig:
        """Return a copy that runs in seconds on a CPU: an embedded toy model (``embedded-gpt2`` unless an embedded
        model was chosen), the embedded corpus, few tokens, a few training steps."""
        return dataclasses.replace(
            self, model=self.model if self.model.startswith("embedded-") else "embedded-gpt2", dataset="embedded",
            fine_tuning_steps=6, fine_tuning_epochs=None, seq_len=min(self.seq_len, 64), eval_tokens=1500,
            eval_stride=None, importance_batches=2, micro_batch_size=4, max_new_tokens=8, latency_rounds=2,
        )  # fmt: skip

    @property
    def steps(self) -> int | None:
        """Fine-tuning steps (None when epochs decide)."""
        if self.fine_tuning_epochs is not None:
            return None
        return 200 if self.fine_tuning_steps is None else self.fine_tuning_steps

    def run_name(self) -> str:
        """A readable, file-safe name: ``embedded-gpt2-gradient-30``."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model).name or self.model)
        return f"{model}-{self.strategy}-{round(self.pruning_level * 100)}"


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
        "seconds": time.perf_counter() - started,
    }


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

    Loaded models, data and importance scores are cached per experiment object, so several runs on one model
    (e.g. a sweep over levels) load and score it once.
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

    def _importance(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> Any:
        from ..evaluation.perplexity import lm_batches, tokenize_texts
        from ..pruning import head_importance

        key = (config.model, config.strategy, config.seed, config.seq_len, config.importance_batches)
        if key not in self._scores:
            batch_size = 8
            ids = tokenize_texts(tokenizer, data.train, max_tokens=config.importance_batches * batch_size * config.seq_len)
            batches = lm_batches(ids, seq_len=config.seq_len, batch_size=batch_size, max_batches=config.importance_batches)
            self._scores[key] = head_importance(model, batches, config.strategy, seed=config.seed, progress=self.progress)
        return self._scores[key]

    # --- one run --------------------------------------------------------------------------------------

    def run_single_experiment(self, model: str = "auto", strategy: str = "gradient", pruning_level: float = 0.3,
                              prompt: str | None = None, fine_tuning_epochs: float | None = None,
                              fine_tuning_steps: int | None = None, *, smoke: bool = False,
                              output_dir: str | os.PathLike[str] | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
        """Run baseline -> prune -> fine-tune for one model, strategy and level; return the result dict.

        ``options`` are further :class:`ExperimentConfig` fields (``learning_rate``, ``seq_len``, ...);
        ``smoke=True`` shrinks everything to seconds. The result (``config``, ``stages``, ``pruning``,
        ``training``, ``recovery``, ``seconds``) is also written to ``<output_dir>/result.json``
        (default ``results_dir/<run name>``).
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
        from ..pruning import remove_heads, select_heads
        from ..pruning.importance import resolve_normalization

        started = time.perf_counter()
        config = dataclasses.replace(config, model=resolve_model_name(config.model))
        out = ensure_writable_dir(output_dir or self.results_dir / config.run_name())
        data = self._dataset(config.dataset)
        model, tokenizer = self._model(config)
        stages: dict[str, dict[str, Any]] = {}
        baseline_key = (self._model_key(config), config.dataset, config.prompt, config.seq_len, config.eval_tokens,
                        config.eval_stride, config.max_new_tokens)  # fmt: skip
        if baseline_key not in self._baselines:
            self._baselines[baseline_key] = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        stages["baseline"] = dict(self._baselines[baseline_key])

        pruning_started = time.perf_counter()
        scores = self._importance(model, tokenizer, data, config)
        mask = select_heads(scores, config.pruning_level, scope=config.scope)
        pruning: dict[str, Any] = {"heads_pruned": int(mask.sum()), "mask": mask.int().tolist(), "scores": scores.tolist(),
                                   "normalization": resolve_normalization("auto", config.strategy)}  # fmt: skip
        pruned_copy = None  # the pruned model as it was before fine-tuning, kept for the latency comparison
        if config.remove_heads and mask.any():
            pruning["report"] = remove_heads(model, mask).to_dict()
            gates = None
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
        """LoRA fine-tune ``model``; return the training summary and the merged plain model."""
        if config.steps == 0:
            return {"steps": 0, "seconds": 0.0}, model
        from ..finetune import FineTuneConfig, fine_tune, merge_adapter

        ft_config = FineTuneConfig(
            r=config.lora_r, alpha=config.lora_alpha, learning_rate=config.learning_rate, max_steps=config.steps,
            epochs=config.fine_tuning_epochs, micro_batch_size=config.micro_batch_size, seq_len=config.seq_len,
            seed=config.seed, dtype=config.dtype, load_in_4bit=config.load_in_4bit, output_dir=str(out), eval_every=max(5, (config.steps or 200) // 8), eval_batches=4,
            checkpoint_every=max(10, (config.steps or 200) // 4), warmup_steps=min(10, max(1, (config.steps or 200) // 10)),
            plot_title="control: the unpruned model, fine-tuned as long" if control else "LoRA recovery of the pruned model",
        )  # fmt: skip
        eval_texts = data.validation
        result = fine_tune(model, tokenizer, data.train, eval_texts, ft_config, live_plot=self.live_plot, progress=self.progress)
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
        }  # fmt: skip
        return summary, merge_adapter(result.model)

    def _control(self, config: ExperimentConfig, data: Any, out: Path) -> dict[str, Any]:
        """Fine-tune the unpruned model for the same steps: separates 'recovery' from 'more training'."""
        model, tokenizer = self._model(config)
        training, model = self._fine_tune(model, tokenizer, data, config, out, control=True)
        stage = measure_stage(model, tokenizer, data.validation, config, progress=self.progress)
        return {**stage, "seconds": stage["seconds"] + training.get("seconds", 0.0), "training": training}

    # --- results --------------------------------------------------------------------------------------

    def comparison(self, result: dict[str, Any] | None = None) -> Any:
        """Return a table of one run's stages (default: the last run), with the control when it ran.

        Columns: perplexity and its change against the baseline, parameters, median latency per generated
        token (wall) and the speed-up against the baseline (CPU time on a CPU), and the seconds each stage took.
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
                "ms / token": stage.get("latency_ms_per_token", math.nan),
                "speed-up": stage.get("speedup", math.nan),
                "seconds": stage["seconds"],
            }
            for name, stage in stages.items()
        }
        table = pd.DataFrame(rows).T
        table = table.astype({"perplexity": float, "parameters": int, "ms / token": float, "speed-up": float, "seconds": float})
        return table.round({"perplexity": 2, "ms / token": 1, "speed-up": 3, "seconds": 1})

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
        from ..plots.pruning import new_figure, plain_log_axis, wide_range

        if not self.results:
            raise ValueError("no results yet: call run_single_experiment(...) first")
        figure = new_figure(11, 3.8)
        stages_ax, curves = figure.subplots(1, 2)
        labels = [stage.replace("_", "-") for stage in STAGES] + ["control"]
        values: list[float] = []
        for result in self.results:
            ppl = [result["stages"][stage]["perplexity"] for stage in STAGES]
            (line,) = stages_ax.plot(range(len(STAGES)), ppl, "o-", label=result["name"])
            values += ppl
            if "control" in result:
                control = result["control"]["perplexity"]
                stages_ax.plot([len(STAGES)], [control], "s", color=line.get_color())
                values.append(control)
                ppl.append(control)
            for x, value in enumerate(ppl):
                stages_ax.annotate(f"{value:.1f}", (x, value), textcoords="offset points", xytext=(5, 4), fontsize=8)
        shown = labels if any("control" in r for r in self.results) else labels[:-1]
        stages_ax.set_xticks(range(len(shown)), shown)
        stages_ax.set_xlim(-0.3, len(shown) - 0.5)
        stages_ax.margins(y=0.15)  # room for the value labels
        if wide_range(values):
            plain_log_axis(stages_ax)
            stages_ax.set_ylabel("perplexity (log axis; lower is better)")
        else:
            stages_ax.set_ylabel("perplexity (axis not from 0; lower is better)")
        stages_ax.set_title("Perplexity per stage", loc="left", fontsize=11)
        stages_ax.grid(True, alpha=0.3)
        stages_ax.legend(fontsize="small")
        for name, history in self._histories.items():
            if "loss" in history:
                curves.plot(history.index, history["loss"], label=f"{name} train", linewidth=1)
            if "eval_loss" in history:
                evals = history["eval_loss"].dropna()
                curves.plot(evals.index, evals, "o--", markersize=3, label=f"{name} eval")
        curves.set_xlabel("step")
        curves.set_ylabel("loss")
        curves.set_title("LoRA: training curves", loc="left", fontsize=11)
        curves.grid(True, alpha=0.3)
        if curves.lines:
            curves.legend(fontsize="x-small")
        figure.save(path or self.results_dir / "results.png")
        return figure


def _share(value: float | None) -> str:
    """A recovery share in words: 'nothing was lost', or a percentage, flagged above 100%."""
    if value is None:
        return "nothing was lost"
    note = " (beyond the unpruned model: compare with the control)" if value > 1 else ""
    return f"{value:.0%}{note}"
