"""The prune-then-recover pipeline: baseline -> prune (heads, or compress) -> recover -> measure every stage.

``Experiment(results_dir).run(config)`` runs one :class:`~.config.ExperimentConfig` and returns an
:class:`~.result.ExperimentResult`, also written to ``<run folder>/result.json``; the tables and figures of a result are
:mod:`.report`'s, sweeps of runs :mod:`.sweep`'s. The stages share the experiment's caches (loaded models, data,
scores, compressed models, baselines, recovery texts), so several runs on one model load, score and compress it once.

Every stage is measured on the dataset's validation split (in-domain perplexity) and, with ``config.ability``, on
general ability (:func:`colab_helpers.evaluation.evaluate_ability`: text of other domains, zero-shot tasks), since
recovery trains on the dataset's domain and in-domain perplexity alone rewards adapting to it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.files import atomic_write_text, check_creatable_dir, ensure_writable_dir
from ..runtime.records import save_results
from .config import STAGES, Compression, ExperimentConfig
from .result import Compressed, ExperimentResult, HeadsPruned, StageMetrics, Training, recovered_shares

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluation.ability import AbilityResult

logger = logging.getLogger(__name__)


def measure_stage(model: Any, tokenizer: Any, texts: list[str], config: ExperimentConfig, *, progress: bool = False) -> StageMetrics:
    """Return perplexity on ``texts`` (in-domain), a greedy generation for the prompt, the parameter count of
    ``model`` and, with ``config.ability``, its general ability (:func:`measure_ability`).

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
    ability = measure_ability(model, tokenizer, ppl.perplexity, config, progress=progress) if config.ability else None
    return StageMetrics(perplexity=ppl.perplexity, eval_tokens=ppl.tokens, generation=generation.text,
                        generation_path=generation.path, parameters=parameter_count(model),
                        weights_mb=weights_bytes(model) / 1e6, seconds=time.perf_counter() - started,
                        ability=ability)  # fmt: skip


def measure_ability(model: Any, tokenizer: Any, in_domain_ppl: float, config: ExperimentConfig, *,
                    progress: bool = False) -> AbilityResult:  # fmt: skip
    """Return the general ability of ``model`` (:meth:`ExperimentConfig.ability_config`: other-domain perplexity,
    zero-shot tasks), its in-domain perplexity being ``in_domain_ppl``: the stage's own measurement on the
    validation split, so the comparison table and the ability table show one in-domain figure, not two."""
    from ..evaluation.ability import evaluate_ability

    ability = evaluate_ability(model, tokenizer, config=config.ability_config(), progress=progress)
    return dataclasses.replace(ability, in_domain_ppl=in_domain_ppl)


def _with_available_tasks(config: ExperimentConfig) -> ExperimentConfig:
    """Return ``config``, or without its ability tasks (other-domain perplexity only, one ``ColabHelpersWarning``)
    when lm-evaluation-harness, an optional extra, is not installed: general ability is still measured."""
    from ..evaluation.harness import INSTALL_HINT, is_lm_eval_available

    if not config.ability or config.ability_tasks is None or is_lm_eval_available():
        return config
    warnings.warn(f"ability_tasks={config.ability_tasks!r} needs lm-evaluation-harness, which is not installed "
                  f"({INSTALL_HINT}); this run measures general ability by other-domain perplexity only "
                  "(ability_tasks=None)", ColabHelpersWarning, stacklevel=3)  # fmt: skip
    return dataclasses.replace(config, ability_tasks=None)


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


class Experiment:
    """Run prune-then-fine-tune pipelines and keep their results under ``results_dir``.

    Loaded models, data, importance scores, compressed models, baselines and recovery texts sampled from a teacher are
    cached per experiment object, so several runs on one model (a sweep over levels; one compression recovered two
    ways) load, score, compress and sample it once.
    """

    def __init__(self, results_dir: str | os.PathLike[str] = "results/pipeline", *, progress: bool = True, live_plot: bool = True) -> None:
        self.results_dir = ensure_writable_dir(results_dir)
        self.progress = progress
        self.live_plot = live_plot
        self._models: dict[str, tuple[Any, Any]] = {}  # the loaded originals (runs work on copies)
        self._data: dict[str, Any] = {}
        self._scores: dict[tuple[Any, ...], Any] = {}
        self._baselines: dict[tuple[Any, ...], StageMetrics] = {}
        self._compressed: dict[tuple[Any, ...], tuple[Any, Compressed]] = {}
        self._texts: dict[tuple[Any, ...], list[str]] = {}  # recovery texts (sampled from a teacher: once)

    def run(self, config: ExperimentConfig, *, output_dir: str | os.PathLike[str] | None = None) -> ExperimentResult:
        """Run baseline -> prune -> recover (-> the control) for ``config``; return the result, also written to
        ``<output_dir>/result.json`` (default ``results_dir/<run name>``)."""
        from ..models.loading import resolve_model_name

        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}; "
                            "e.g. run(ExperimentConfig(model='embedded-gpt2'))")  # fmt: skip
        started = time.perf_counter()
        config = _with_available_tasks(dataclasses.replace(config, model=resolve_model_name(config.model)))
        out, data, model, tokenizer = self._prepare(config, output_dir)
        baseline = self._baseline(model, tokenizer, data, config)
        pruning_started = time.perf_counter()
        model, pruning, gates = self._prune(model, tokenizer, data, config)
        pruned_copy = copy.deepcopy(model) if gates is None else None  # the pruned model as it was, for latency
        pruned = self._measure(model, tokenizer, data, config)
        pruned = dataclasses.replace(pruned, seconds=time.perf_counter() - pruning_started)  # scoring + pruning + measuring
        training, model = self._fine_tune(model, tokenizer, data, config, out / "finetune")
        fine_tuned = self._measure(model, tokenizer, data, config)
        fine_tuned = dataclasses.replace(fine_tuned, seconds=fine_tuned.seconds + training.seconds)
        stages = self._with_latency({"baseline": baseline, "pruned": pruned, "fine_tuned": fine_tuned}, config,
                                    tokenizer, model, pruned_copy)  # fmt: skip
        del pruned_copy
        model_dir = self._save_model(model, tokenizer, config, out, gated=gates is not None)
        if gates is not None:
            gates.remove()
        control = control_training = None
        if config.control and (config.steps or config.fine_tuning_epochs):
            del model  # the control needs its own copy: free this one first
            control, control_training = self._control(config, data, out / "control")
        share, share_in_domain = recovered_shares(*(stages[stage] for stage in STAGES))
        result = ExperimentResult(
            name=config.run_name(), config=config, **stages, pruning=pruning, training=training, recovered_share=share,
            recovered_share_in_domain=share_in_domain, seconds=time.perf_counter() - started, output_dir=out,
            model_dir=model_dir, control=control, control_training=control_training,
        )  # fmt: skip
        save_results(out, result=result.to_dict())
        logger.info("%s: in-domain perplexity %.1f -> %.1f -> %.1f", result.name, *(stages[s].perplexity for s in STAGES))
        return result

    # --- the stages, in the order run() calls them ------------------------------------------------------------

    def _prepare(self, config: ExperimentConfig, output_dir: str | os.PathLike[str] | None) -> tuple[Path, Any, Any, Any]:
        """Check and load every input, then create the run folder; return it, the data, a model copy, the tokenizer.

        Both loads are cached, and a bad model, dataset or architecture fails before the folder exists, so it
        leaves nothing behind.
        """
        from ..pruning import head_layout

        target = Path(output_dir).expanduser() if output_dir else self.results_dir / config.run_name()
        check_creatable_dir(target, what="output_dir")
        if config.ability and config.ability_tasks is not None:  # hub tasks without the hub fail here, not after the baseline
            from ..evaluation.tasks import check_hub_tasks, resolve_tasks

            check_hub_tasks(resolve_tasks(config.ability_task_names()))  # type: ignore[arg-type]
        data = self._dataset(config.dataset)
        model, tokenizer = self._model(config)
        head_layout(model)  # an architecture pruning cannot handle fails here, not after the baseline
        if isinstance(config.pruning, Compression):
            from ..pruning.compress import check_axes

            check_axes(model, config.pruning.axes)  # an axis this model cannot lose fails here too
        return ensure_writable_dir(target), data, model, tokenizer

    def _baseline(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> StageMetrics:
        """Measure the unpruned model (once per model and measuring settings)."""
        key = (self._model_key(config), config.dataset, config.prompt, config.seq_len, config.eval_tokens,
               config.eval_stride, config.max_new_tokens, config.ability, config.ability_tasks,
               config.ability_limit)  # fmt: skip
        if key not in self._baselines:
            self._baselines[key] = self._measure(model, tokenizer, data, config)
        return self._baselines[key]

    def _measure(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> StageMetrics:
        return measure_stage(model, tokenizer, data.validation, config, progress=self.progress)

    def _prune(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> tuple[Any, HeadsPruned | Compressed, Any]:
        """Prune ``model`` as ``config.pruning`` says; return it, what was pruned, and the gates when heads were only
        gated (None when they were removed)."""
        from ..pruning import gate_heads, remove_heads, select_heads

        if isinstance(config.pruning, Compression):  # across heads, MLP channels and layers, to a parameter share
            model, compressed = self._compress(model, tokenizer, data, config)
            return model, compressed, None
        spec = config.pruning  # attention heads by level
        scores = self._importance(model, tokenizer, data, config)
        mask = select_heads(scores, spec.level, scope=spec.scope)
        if spec.remove and mask.any():
            removal = remove_heads(model, mask)
            return model, HeadsPruned(mask.int().tolist(), scores.tolist(), removal), None
        gates = gate_heads(model, mask)  # kept for fine-tuning: LoRA leaves gated projections alone
        return model, HeadsPruned(mask.int().tolist(), scores.tolist()), gates

    def _with_latency(self, stages: dict[str, StageMetrics], config: ExperimentConfig, tokenizer: Any,
                      fine_tuned: Any, pruned: Any | None) -> dict[str, StageMetrics]:  # fmt: skip
        """Time every stage's model together (interleaved rounds, medians); return the stages with latency and speed-up."""
        from ..evaluation.latency import generation_latency, speedup

        models = {"baseline": self._models[self._model_key(config)][0], "pruned": pruned, "fine_tuned": fine_tuned}
        timed = {name: model for name, model in models.items() if model is not None}
        reports = generation_latency(timed, tokenizer, config.prompt, rounds=config.latency_rounds)
        if "pruned" not in reports:  # only gated: the pruned model has the fine-tuned one's shape and gates
            reports["pruned"] = reports["fine_tuned"]
        return {name: dataclasses.replace(stage, latency=reports[name], speedup=speedup(reports["baseline"], reports[name]))
                for name, stage in stages.items()}  # fmt: skip

    @staticmethod
    def _save_model(model: Any, tokenizer: Any, config: ExperimentConfig, out: Path, *, gated: bool) -> Path | None:
        """Save the pruned, fine-tuned model as ``<run>/model`` when ``config.save_model``; return its folder."""
        if not config.save_model:
            return None
        from ..pruning import save_pruned

        if gated:
            logger.info("save_model: the model is only gated (remove_heads=False); saving the unpruned weights")
        return Path(save_pruned(model, tokenizer, out / "model"))

    def _control(self, config: ExperimentConfig, data: Any, out: Path) -> tuple[StageMetrics, Training]:
        """Fine-tune the unpruned model for the same steps: separates 'recovery' from 'more training'."""
        model, tokenizer = self._model(config)
        training, model = self._fine_tune(model, tokenizer, data, config, out, control=True)
        stage = self._measure(model, tokenizer, data, config)
        return dataclasses.replace(stage, seconds=stage.seconds + training.seconds), training

    # --- cached inputs -----------------------------------------------------------------------------------------

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

        strategy = config.pruning.strategy
        key = (config.model, strategy, config.seed, config.seq_len, config.importance_batches)
        if key not in self._scores:
            batches = self._calibration_batches(model, tokenizer, data, config)
            self._scores[key] = head_importance(model, batches, strategy, seed=config.seed, progress=self.progress)
        return self._scores[key]

    def _compress(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig) -> tuple[Any, Compressed]:
        """Compress ``model`` in place as ``config.pruning`` says; return it and what was pruned. A compression done
        before with the same settings is reused (a copy of the model it gave).

        The calibration batches are those head importance reads (``importance_batches`` of 8 x ``seq_len``): the
        first half scores the units, the rest compares the candidate allocations (all of them when there is one).
        """
        from ..pruning.compress import compress

        spec = config.pruning
        key = (self._model_key(config), config.dataset, spec.target_params, spec.axes, config.seq_len,
               config.importance_batches)  # fmt: skip
        if key in self._compressed:  # e.g. the same compression recovered two ways: compress it once
            compressed, record = self._compressed[key]
            logger.info("reusing the compressed model of an earlier run with the same settings")
            return copy.deepcopy(compressed), record
        batches = self._calibration_batches(model, tokenizer, data, config)
        half = (len(batches) + 1) // 2
        scoring, evaluation = (batches[:half], batches[half:]) if len(batches) >= 2 else (batches, None)
        report = compress(model, scoring, spec.target_params, spec.axes, eval_batches=evaluation, progress=self.progress)
        logger.info("%s", report.summary())
        self._compressed[key] = (copy.deepcopy(model), Compressed(report))
        return model, Compressed(report)

    # --- fine-tuning -------------------------------------------------------------------------------------------

    def _fine_tune(self, model: Any, tokenizer: Any, data: Any, config: ExperimentConfig, out: Path,
                   *, control: bool = False) -> tuple[Training, Any]:  # fmt: skip
        """Recover ``model``: train a LoRA adapter (merged in afterwards) or every weight (``fine_tuning_method``) on
        ``recovery_text``, on the LM loss or distilled from the unpruned model (``recovery_method='distill'``; the
        control always on the LM loss, on the same text); return the training summary and the plain model. The
        history goes to ``<out>/history.csv``."""
        method = "lora" if control else config.recovery_method
        kinds = {"recovery_method": method, "fine_tuning_method": config.fine_tuning_method,
                 "recovery_text": config.recovery_text}  # fmt: skip
        if config.steps == 0:
            return Training(**kinds, steps=0, seconds=0.0), model
        train = self._recovery_texts(config, data, tokenizer)
        ft_config = config.finetune_config(out, control=control)
        if method == "distill":
            result = self._distill(model, tokenizer, train, data, config, ft_config)
        else:
            from ..finetune import fine_tune

            result = fine_tune(model, tokenizer, train, data.validation, ft_config, live_plot=self.live_plot,
                               progress=self.progress)  # fmt: skip
        result.raise_if_failed()  # a NaN model is no result to measure
        history_path = out / "history.csv"
        atomic_write_text(history_path, result.history_frame().to_csv())
        distill = config.distill_config(Path(ft_config.output_dir) / "teacher_cache").to_dict() if method == "distill" else None
        training = Training(
            **kinds, steps=result.steps, seconds=result.seconds, final_loss=result.final_loss, texts=len(train),
            best_step=result.best_step, best_eval_loss=result.best_eval_loss, stopped=result.stopped_reason,
            device=result.device, backend=result.backend, dtype=ft_config.dtype, load_in_4bit=ft_config.load_in_4bit,
            events=len(result.events), event_kinds=tuple(sorted({event["kind"] for event in result.events})),
            history_path=str(history_path), plot_path=str(result.plot_path) if result.plot_path else None,
            distill=distill,  # what was done: a live teacher, or its top-k logits precomputed to disk
        )  # fmt: skip
        if config.fine_tuning_method == "full":  # every weight was trained: no adapter to merge
            return training, result.model
        from ..finetune import merge_adapter

        return training, merge_adapter(result.model)

    def _recovery_texts(self, config: ExperimentConfig, data: Any, tokenizer: Any) -> list[str]:
        """Return what recovery and the control train on (:func:`colab_helpers.finetune.recovery_texts`): the
        dataset's training split, text the unpruned model writes (shipped for some models, else sampled once from the
        cached original and kept for later runs), or both."""
        from ..finetune.teacher_text import recovery_texts

        key = (self._model_key(config), config.dataset, config.recovery_text, config.recovery_samples)
        if key not in self._texts:
            teacher = self._models[self._model_key(config)][0]
            self._texts[key] = recovery_texts(config.recovery_text, data.train, config.model, teacher=teacher,
                                              tokenizer=tokenizer, samples=config.recovery_samples)  # fmt: skip
            logger.info("recovery text %r: %d texts", config.recovery_text, len(self._texts[key]))
        return self._texts[key]

    def _distill(self, model: Any, tokenizer: Any, train: list[str], data: Any, config: ExperimentConfig,
                 ft_config: Any) -> Any:  # fmt: skip
        """Distil the unpruned model (the cached original, lent as the frozen teacher) into ``model`` on ``train``;
        return the fine-tuning result. ``distill`` freezes its teacher: the original's training mode and
        ``requires_grad`` flags are put back afterwards, since later runs copy it."""
        from ..finetune import distill

        teacher = self._models[self._model_key(config)][0]
        was_training = teacher.training
        trainable = [param.requires_grad for param in teacher.parameters()]
        try:
            settings = config.distill_config(Path(ft_config.output_dir) / "teacher_cache")
            return distill(model, teacher, tokenizer, train, data.validation, ft_config, settings,
                           live_plot=self.live_plot, progress=self.progress)  # fmt: skip
        finally:
            teacher.train(was_training)
            for param, flag in zip(teacher.parameters(), trainable):
                param.requires_grad_(flag)
