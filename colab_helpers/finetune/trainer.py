"""The guarded LoRA training loop: :class:`FineTuner` and :func:`fine_tune`.

Our own small loop over peft (AdamW, gradient clipping, explicit atomic checkpoints), not transformers'
``Trainer``, because a ``Trainer`` cannot change device mid-``train()`` (a CUDA error must let the same run go on
on the CPU), cannot halve the micro-batch and retry a step on OOM, filters NaN only from the *logged* loss
(non-finite gradients still reach the optimizer), and writes checkpoints in place (a kill mid-save leaves a
broken "latest"). Plots, progress and gradient files attach from outside through minGPT-style callbacks
(:mod:`.callbacks`).

One step: the step's sequences (``micro_batch_size x accumulation``, fixed by the step number so a resumed or
retried step sees the same data, :mod:`.blocks`) go through forward and backward in micro-batches; gradients
are clipped; one host sync reads the loss and the gradient norm; a non-finite value skips the update and the
:class:`~.guard.FailureGuard` decides what follows (as it does for out-of-memory and CUDA errors). The run's
counters are a :class:`~.state.TrainingState`, saved with the adapter by :func:`.checkpoint.save_run`.

What a micro-batch's loss is comes from one override point, :meth:`FineTuner._train_loss`: the causal-LM loss
here, knowledge distillation from a teacher in :class:`~.distill.Distiller`. It may return extra terms (named by
``loss_parts``) that reach the history rows through the same one host sync. ``method="full"`` trains every weight
of the model instead of an adapter: the same loop, the weights in the checkpoints, the model saved whole at the end.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs on every rank: each rank trains on
its own share of the step's sequences, one all-reduce averages gradients and loss (:mod:`.distributed`), so every
guard decides the same on every rank; rank 0 alone writes files and shows progress.

About 650 lines, in one module because what is left shares the run's live fields (model, optimizer, device,
precision and GradScaler, ranks, callbacks) and changes together: set-up in the order
the checks must run (data, ranks, targets, resume, adapter), the loop, the step with its retry, the evaluation
with early stopping, and the four-line hand-offs to checkpoint files. Splitting them further would pass those
fields around or reach into private ones; every piece that stands on its own (data :mod:`.blocks`, counters
:mod:`.state`, failures :mod:`.guard`, files :mod:`.checkpoint`, result :mod:`.result`) has its own module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.cuda_fallback import is_cuda_oom
from ..runtime.files import atomic_write_text, ensure_writable_dir
from ..runtime.modules import model_device
from ..runtime.records import to_jsonable
from . import checkpoint as ckpt
from .blocks import eval_blocks, total_steps, training_blocks
from .callbacks import GradientCallback, LivePlotCallback, ProgressCallback
from .completions import CompletionBatch, TrainingData, weight
from .config import FineTuneConfig
from .distributed import check_same_model, join_device, setup_distributed
from .guard import (
    FailureGuard,
    StopTraining,
    check_finite_weights,
    load_values,
    move_optimizer_state,
    remote_oom,
    to_device,
)
from .lora import (
    adapter_targets,
    attach_lora,
    check_4bit,
    choose_backend,
    hooked_modules,
    is_quantized,
    model_fingerprint,
    resolve_precision,
    trainable_parameters,
)
from .result import FineTuneResult
from .resume import checkpoint_to_resume
from .state import TrainingState

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # method="full": the trained model, saved whole
GRADIENT_DIR = "gradients"
PLOT_FILE = "training.png"
SUMMARY_FILE = "history.json"
_CALLBACK_HOOKS = ("on_train_begin", "on_step_end", "on_gradients", "on_eval", "on_event", "on_train_end",
                   "on_train_error")
_QUIET_EVENTS = ("nan_skip", "resumed", "early_stop")  # logged at INFO, the others at WARNING


class FineTuner:
    """A LoRA fine-tuning run that survives NaNs, out-of-memory, CUDA failures and disconnects; see :func:`fine_tune`.

    Construction checks everything that can be checked before training (settings, text length, weights that are
    already NaN or infinite, output dir, target modules, a checkpoint to resume) and attaches the adapter;
    :meth:`train` runs the loop.
    """

    # names of the extra terms :meth:`_train_loss` returns after the loss (history columns), e.g. distillation's
    loss_parts: tuple[str, ...] = ()
    model_role = "the model"  # how errors name the model being trained ("the student" in distillation)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        train_texts: TrainingData,
        eval_texts: TrainingData | None = None,
        config: FineTuneConfig | None = None,
        *,
        callbacks: Iterable[Any] = (),
        live_plot: bool = True,
        progress: bool = True,
    ) -> None:
        import torch

        self.config = cfg = config if config is not None else FineTuneConfig()
        if not isinstance(cfg, FineTuneConfig):
            raise TypeError(f"config must be a FineTuneConfig, got {type(cfg).__name__}; e.g. FineTuneConfig(max_steps=99)")
        # --- data: checked before any model or file work, so a bad input fails fast and leaves no empty folder ---
        self._blocks, self.completion_only = training_blocks(tokenizer, train_texts, cfg)  # pairs: prompts masked
        self._eval_blocks = eval_blocks(tokenizer, eval_texts, cfg)
        check_finite_weights(model, self.model_role)  # NaN weights: every step skipped; refused before any folder
        # --- data-parallel run (accelerate launch / torchrun); None in a plain single process ---
        self.device = model_device(model)
        self._dist = setup_distributed(self.device)
        self.rank = self._dist.rank if self._dist is not None else 0
        self.world_size = self._dist.world_size if self._dist is not None else 1
        self.is_main_process = self.rank == 0  # the rank that writes files and shows progress
        if self._dist is not None:
            self.device = join_device(self._dist, model, self.device)
            if self._eval_blocks is not None:  # each rank scores a disjoint share; the mean is over all of them
                self._eval_total = weight(self._eval_blocks)
                self._eval_blocks = self._eval_blocks[self.rank :: self.world_size]
        self.max_steps = total_steps(cfg, self._blocks, self.world_size, self.completion_only)
        # --- model ---
        self.tokenizer = tokenizer  # saved with the model of a method="full" run
        self._amp_dtype, use_scaler = resolve_precision(cfg.dtype, self.device)
        self._scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        if cfg.method == "full":
            self.targets, self.gated_left_out = _check_full_training(model), []
        else:
            self.targets, self.gated_left_out = adapter_targets(model, cfg.target_modules)
        self.fingerprint = self._fingerprint(model)
        if self._dist is not None:
            check_same_model(self._dist, self.fingerprint)
        self.quantized = check_4bit(cfg, model, self.device)
        # --- the checkpoint to resume, checked before the model is touched (a mismatch leaves it as it was) ---
        new_folder = not Path(cfg.output_dir).expanduser().exists()
        self.output_dir = _writable_output_dir(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / CHECKPOINT_DIR
        try:
            resume_from = checkpoint_to_resume(self.checkpoint_dir, self.fingerprint, resume=cfg.resume,
                                               distributed=self._dist)
            self.model, self.backend = self._with_adapter(model)
        except BaseException:
            if new_folder and not any(self.output_dir.iterdir()):  # made by this call for nothing: leave no trace
                self.output_dir.rmdir()
            raise
        self.params = [p for _, p in self._named_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # --- run state: the counters go into checkpoints; the guard keeps the rollback snapshots ---
        self.state = TrainingState(micro_batch_size=cfg.micro_batch_size)
        self.guard = FailureGuard(self)
        self._best_params: list[torch.Tensor] | None = None
        self._updating = False
        self._resumed_from: Path | None = None
        self._user_callbacks = list(callbacks)
        self._live_plot, self._progress = live_plot, progress
        self._callbacks: list[Any] = []
        self._hooks: dict[str, list[Callable[..., None]]] = {}
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        if self._dist is not None:  # same start everywhere, whatever each rank's seed or adapter was
            self._dist.broadcast_parameters(self.params)

    def _with_adapter(self, model: Any) -> tuple[Any, str]:
        """Return ``(the model with LoRA attached, its backend)``; a peft model's own adapter is trained on. With
        ``method="full"``: ``(the model itself with every floating-point weight trainable, "full")``."""
        import torch
        from peft import PeftModel

        cfg = self.config
        if cfg.method == "full":
            if getattr(model, "loss_type", "") is None:  # as attach_lora: name the loss, quietly
                model.loss_type = "ForCausalLM"
            for param in model.parameters():
                param.requires_grad_(param.is_floating_point())
            tuned, backend = model, "full"
        elif isinstance(model, PeftModel):
            tuned, backend = model, "peft"
        else:
            backend = choose_backend(cfg, model, self.device, gated=bool(hooked_modules(model)))
            torch.manual_seed(cfg.seed)  # LoRA initialisation
            tuned, backend = attach_lora(model, cfg, self.targets, backend, quantized=self.quantized)
        self._named_params = trainable_parameters(tuned)
        if not self._named_params:
            raise ValueError(
                "the model has no trainable parameters: check target_modules, or load a saved adapter with "
                "PeftModel.from_pretrained(base, path, is_trainable=True)"
            )
        return tuned, backend

    # --- the run's counters, read by callbacks -------------------------------------------------------------

    @property
    def step(self) -> int:
        """The last step completed."""
        return self.state.step

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per step so far (a resumed run: from step 1)."""
        return self.state.history

    @property
    def events(self) -> list[dict[str, Any]]:
        """NaN skips, rollbacks, halvings, fallbacks and stops so far."""
        return self.state.events

    @property
    def micro_batch_size(self) -> int:
        """The micro-batch now (the config's, lowered by out-of-memory or non-finite halvings)."""
        return self.state.micro_batch_size

    @property
    def distributed(self) -> bool:
        """True in a data-parallel run of several processes."""
        return self._dist is not None

    def _fingerprint(self, model: Any) -> dict[str, Any]:
        config = self.config.fingerprint_fields()
        if self.world_size > 1:  # sequences per optimizer step over all ranks: what is trained
            config["effective_batch_size"] *= self.world_size
        if self.completion_only:  # a different objective: a plain-text checkpoint cannot go on with pairs, nor back
            config["data"] = "completions"
        return {"model": model_fingerprint(model, self.targets), "config": config}

    # --- callbacks and events ------------------------------------------------------------------------------

    def _install_callbacks(self) -> None:
        cfg = self.config
        callbacks = list(self._user_callbacks)  # on every rank: they can check tuner.is_main_process
        if self._progress and self.is_main_process:
            callbacks.append(ProgressCallback(self.max_steps, initial=min(self.step, self.max_steps)))
        if self._live_plot and self.is_main_process:
            path = self.output_dir / PLOT_FILE
            callbacks.append(LivePlotCallback(path, min_interval=cfg.plot_every_seconds, title=cfg.plot_title))
        if cfg.save_gradients and cfg.checkpoint_every and self.is_main_process:
            callbacks.append(GradientCallback(self.output_dir / GRADIENT_DIR, every=cfg.checkpoint_every))
        self._callbacks = callbacks
        self._hooks = {
            name: [getattr(cb, name) for cb in callbacks if callable(getattr(cb, name, None))] for name in _CALLBACK_HOOKS
        }

    def _emit(self, hook: str, *args: Any) -> None:
        for fn in self._hooks.get(hook, ()):
            fn(self, *args)

    def record_event(self, step: int, kind: str, message: str, **extra: Any) -> None:
        """Record an event of ``step``, log it, and pass it to the callbacks."""
        event = {"step": step, "kind": kind, "message": message, **extra}
        self.state.events.append(event)
        level = logging.INFO if kind in _QUIET_EVENTS else logging.WARNING
        if not self.is_main_process:  # every rank records the same events: rank 0 tells them
            level = logging.DEBUG
        logger.log(level, "step %d: %s", step, message)
        self._emit("on_event", event)

    # --- the loop ----------------------------------------------------------------------------------------

    def train(self) -> FineTuneResult:
        """Run the remaining steps and return the :class:`FineTuneResult` (also after an early or forced stop).

        Interrupting (Ctrl-C, Colab's stop button) writes a checkpoint of the last finished step before the
        ``KeyboardInterrupt`` propagates, so ``resume=True`` continues from there.
        """
        try:
            self.state.start_clock()
            self._install_callbacks()
            self._emit("on_train_begin")
            reason = "max_steps" if self.step < self.max_steps else "resumed_finished"
            self.model.train()
            self.guard.take_snapshot()
            if self.rank > 0:  # own dropout masks per rank (rank 0 keeps the stream a checkpoint restores)
                import torch

                torch.manual_seed(self.config.seed * 1_000_003 + self.step * 1_009 + self.rank)
            try:
                self._run_steps()
            except StopTraining as stop:
                reason = stop.reason
            except BaseException as exc:
                self._on_error(exc)
                raise
            return self._finish(reason)
        finally:
            if self._dist is not None:
                self._dist.close()  # only a process group we created; one from accelerate stays open

    def _run_steps(self) -> None:
        cfg = self.config
        while self.step < self.max_steps:
            step = self.step + 1
            row = self._train_step(step)
            self.state.step = step
            self._updating = False
            self.state.history.append(row)
            self._emit("on_step_end", row)
            self.guard.after_step(row)
            if self._eval_blocks is not None and step % cfg.eval_every == 0:
                self._evaluate_into(row)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.max_steps:
                self.save_checkpoint()

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self._checkpoint_on_interrupt()
        for fn in self._hooks.get("on_train_error", ()):  # e.g. save the plot of what happened so far
            try:
                fn(self, exc)
            except Exception as callback_error:  # never hide the original error behind a callback's
                logger.warning("on_train_error callback failed: %s", callback_error)

    def _finish(self, reason: str) -> FineTuneResult:
        """Evaluate the last step, checkpoint, restore the best adapter, save it and return the result."""
        needs_eval = self._eval_blocks is not None and self.history and "eval_loss" not in self.history[-1]
        if needs_eval and reason != "resumed_finished":
            with contextlib.suppress(StopTraining):  # the run is over anyway: patience running out changes nothing
                self._evaluate_into(self.history[-1])
        seconds = self.state.elapsed() - self.state.elapsed_seconds  # this session's
        finished = reason == "resumed_finished"
        reason, failure = (reason, None) if finished else self.guard.verdict(reason)
        # a failed run's adapter is no result: neither a final checkpoint nor the adapter folder gets it
        last = ckpt.latest_checkpoint(self.checkpoint_dir) if finished or failure else self.save_checkpoint()
        self.state.stop_clock()
        state = self.state
        if self.config.restore_best and self._best_params is not None:
            load_values(self.params, self._best_params)
            logger.info("restored the adapter of step %s (best eval loss %.4f)", state.best_step, state.best_eval_loss)
        adapter_dir, model_dir = self._save_final(failure)
        result = FineTuneResult(
            model=self.model, history=state.history, events=state.events, best_step=state.best_step,
            best_eval_loss=state.best_eval_loss, seconds=seconds, steps=state.step, stopped_reason=reason,
            device=str(self.device), world_size=self.world_size, backend=self.backend, output_dir=self.output_dir,
            checkpoint_dir=last, adapter_dir=adapter_dir, failure=failure, model_dir=model_dir,
        )  # fmt: skip
        self.model.eval()
        self._emit("on_train_end", result)
        if self.is_main_process:
            summary = json.dumps(to_jsonable(result.to_dict()), indent=1, allow_nan=False)
            atomic_write_text(self.output_dir / SUMMARY_FILE, summary + "\n")
        if self._dist is not None:
            self._dist.barrier()  # when train() returns on any rank, rank 0's files are all there
        return result

    def _save_final(self, failure: str | None) -> tuple[Path | None, Path | None]:
        """Save what the run trained (nothing for a failed run); return ``(adapter dir, model dir)``.

        LoRA: the adapter in ``<output_dir>/adapter``. ``method="full"``: the whole model and the tokenizer in
        ``<output_dir>/model``, except for a gated model (its gates cannot be saved): one warning, nothing saved.
        """
        from .export import save_adapter, save_model

        if failure:
            return None, None
        if self.config.method != "full":
            adapter_dir = self.output_dir / ADAPTER_DIR
            return (save_adapter(self.model, adapter_dir) if self.is_main_process else adapter_dir), None
        gated = hooked_modules(self.model)
        if gated:
            warnings.warn(
                f"method='full': the trained model carries head-gate hooks ({gated[0]}, ...), which save_pretrained "
                f"cannot store, so {self.output_dir / MODEL_DIR} was not written; remove the gated heads physically "
                "(colab_helpers.pruning.remove_heads) and save result.model yourself",
                ColabHelpersWarning,
                stacklevel=5,  # _save_final <- _finish <- train <- fine_tune <- the caller
            )
            return None, None
        model_dir = self.output_dir / MODEL_DIR
        return None, (save_model(self.model, self.tokenizer, model_dir) if self.is_main_process else model_dir)

    def _checkpoint_on_interrupt(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self._updating:  # stopped inside the optimizer update: the weights belong to no step
            logger.warning("interrupted during an optimizer update: not checkpointing; resume from the last checkpoint")
            return
        try:
            path = self.save_checkpoint()
        except BaseException as exc:  # a second Ctrl-C or a full disk: the previous checkpoint stays valid
            logger.warning("interrupted; could not write a checkpoint (%s)", exc)
            return
        logger.warning("interrupted at step %d: checkpoint %s written; run again with resume=True", self.step, path)

    def _train_step(self, step: int) -> dict[str, Any]:
        """Run one guarded optimizer step and return its history row."""
        import torch

        cfg = self.config
        rows = self._blocks.rows_for_step(step, cfg.effective_batch_size * self.world_size)
        if self.world_size > 1:  # the step's sequences of all ranks, dealt out: disjoint shards
            rows = rows[self.rank :: self.world_size]
        sequences = self._blocks.blocks[rows]
        while True:
            try:
                loss_sums, grad_norm = self._forward_backward(sequences, rows)
                # the one host sync of the step: loss, its parts and the gradient norm together
                synced = torch.cat([loss_sums, grad_norm.reshape(1).to(loss_sums.device, torch.float32)])
                *losses, norm = synced.tolist()
                loss, parts = losses[0], dict(zip(self.loss_parts, losses[1:]))
                break
            except Exception as exc:
                self.optimizer.zero_grad(set_to_none=True)
                if self._scaler is not None:  # forget a half-done unscale_ of the failed attempt
                    with contextlib.suppress(Exception):
                        self._scaler = type(self._scaler)(self.device.type, init_scale=self._scaler.get_scale())
                self.guard.recover(exc, step)
        lr = cfg.learning_rate * self.state.lr_scale * self._schedule(step)
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._updating = True  # until the loop records the step: an interrupt now leaves weights of no step
            if self._scaler is not None:
                self._scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        row = {"step": step, "loss": loss, **parts, "lr": lr, "grad_norm": norm,
               "micro_batch_size": self.micro_batch_size, "skipped": not finite, "device": self.device.type,
               "seconds": self.state.elapsed()}
        if self._scaler is not None:
            if not finite and math.isfinite(loss):
                # fp16 gradients overflowed at this loss scale: GradScaler's own business (it lowers the scale),
                # not a sign of divergence, so it does not count towards the NaN rollback
                row["overflow"] = True
            self._scaler.update()
        if finite:
            self._emit("on_gradients", row)  # the step's clipped, unscaled gradients, before they are cleared
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def _forward_backward(self, sequences: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate gradients over the step's micro-batches (``rows``: their numbers in the training blocks);
        return ``([mean loss, *mean parts], clipped-gradient norm)`` as tensors."""
        import torch

        total = weight(sequences)
        loss_sum = torch.zeros(1 + len(self.loss_parts), device=self.device, dtype=torch.float32)
        failure: BaseException | None = None
        try:
            for chunk, chunk_rows in zip(sequences.split(self.micro_batch_size), rows.split(self.micro_batch_size)):
                terms = self._train_loss(chunk, chunk_rows).float().reshape(-1)
                # exact mean over the step: blocks have equal lengths; pairs weigh by their completion tokens
                weighted = terms * (weight(chunk) / total)
                (self._scaler.scale(weighted[0]) if self._scaler is not None else weighted[0]).backward()
                loss_sum += weighted.detach()
        except Exception as exc:
            if self._dist is None or not is_cuda_oom(exc):
                raise  # single process: handled by _train_step; several: the launcher stops every rank
            failure = exc  # the other ranks wait in the all-reduce below: tell them, and all retry smaller
        if self._dist is not None:
            # scaled gradients are averaged before unscale_: every rank then sees the same values, so GradScaler's
            # inf check, the clipped norm and the non-finite skip below agree on every rank without another sync
            loss_sum, failures = self._dist.average_gradients(self.params, loss_sum, failed=failure is not None)
            if failures:
                raise failure or remote_oom(failures, self.micro_batch_size)
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        return loss_sum, grad_norm

    def _train_loss(self, chunk: torch.Tensor | CompletionBatch, rows: torch.Tensor) -> torch.Tensor:
        """Return what one training micro-batch minimises: its mean loss, or ``[loss, *parts]`` (1-D, the parts
        named by :attr:`loss_parts`, recorded in the history). ``rows`` are the micro-batch's numbers in the
        training blocks (what a subclass looks precomputed data up by). The override point of the training
        objective; evaluation keeps :meth:`_loss`."""
        return self._loss(chunk)

    def _loss(self, chunk: torch.Tensor | CompletionBatch) -> torch.Tensor:
        """Return the mean loss of one micro-batch: over every token of plain blocks, over the completion tokens
        of (prompt, completion) examples (labels -100 on prompt and padding)."""
        ids, mask, labels = self._inputs(chunk)
        with self._autocast():
            return self.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss

    def _inputs(self, chunk: torch.Tensor | CompletionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(input_ids, attention_mask, labels)`` of a micro-batch on the run's device."""
        import torch

        if isinstance(chunk, CompletionBatch):
            batch = chunk.to(self.device, non_blocking=True)
            return batch.input_ids, batch.attention_mask, batch.labels
        ids = chunk.to(self.device, non_blocking=True)
        return ids, torch.ones_like(ids), ids

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Return the run's mixed-precision context (none in fp32, e.g. on the CPU)."""
        import torch

        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)

    def _schedule(self, step: int) -> float:
        """Return the learning-rate factor of ``step``: linear warm-up, then cosine decay to 10%."""
        warmup = self.config.warmup_steps
        if step <= warmup:
            return step / (warmup + 1)
        span = max(1, self.max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def move_to_cpu(self) -> None:
        """Move the model, optimizer state and best weights to the CPU in fp32 (the guard's CUDA fallback)."""
        import torch

        cpu = torch.device("cpu")
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        self.model.to(cpu)
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in self.model.parameters()):
            self.model.float()  # half-precision matmuls on the CPU are slow or missing
        move_optimizer_state(self.optimizer, cpu)
        if self._best_params is not None:
            self._best_params = to_device(self._best_params, cpu)
        self.device, self._amp_dtype, self._scaler = cpu, None, None

    # --- evaluation and early stopping -------------------------------------------------------------------

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """Evaluate, merge ``eval_loss`` and ``eval_ppl`` into ``row``, track the best, maybe stop early."""
        while True:
            try:
                loss = self._eval_loss()
                break
            except Exception as exc:
                self.guard.recover(exc, row["step"])
        row["eval_loss"] = loss
        row["eval_ppl"] = math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf
        self._emit("on_eval", row)
        state = self.state
        if math.isfinite(loss) and (state.best_eval_loss is None or loss < state.best_eval_loss):
            state.best_eval_loss, state.best_step = loss, row["step"]
            self._best_params = [p.detach().clone() for p in self.params]
            state.evals_without_improvement = 0
            return
        state.evals_without_improvement += 1
        patience = self.config.early_stopping_patience
        if patience is not None and state.evals_without_improvement >= patience:
            message = (f"eval loss did not improve for {patience} evaluation(s) (best {state.best_eval_loss} at step "
                       f"{state.best_step}): stopping")
            self.record_event(row["step"], "early_stop", message, best_step=state.best_step)
            raise StopTraining("early_stopping")

    def _eval_loss(self) -> float:
        import torch

        assert self._eval_blocks is not None
        self.model.eval()
        try:
            total = torch.zeros((), device=self.device, dtype=torch.float32)
            failure: BaseException | None = None
            try:
                with torch.no_grad():
                    for chunk in self._eval_blocks.split(self.micro_batch_size):
                        total += self._loss(chunk).float() * weight(chunk)
            except Exception as exc:
                if self._dist is None or not is_cuda_oom(exc):
                    raise
                failure = exc  # as in _forward_backward: the other ranks must hear of it, then all retry smaller
            if self._dist is None:
                return (total / weight(self._eval_blocks)).item()
            # each rank scored its share of the eval sequences: the mean over all of them, the same on every rank
            loss_sum, failures = self._dist.sum([0.0, 1.0] if failure is not None else [total.item(), 0.0])
            if failures:
                raise failure or remote_oom(round(failures), self.micro_batch_size)
            return loss_sum / self._eval_total
        finally:
            self.model.train()

    # --- checkpoints -------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the state after the last step done; return its directory.

        In a data-parallel run only rank 0 writes (every rank holds the same weights and state); the others
        return the directory rank 0 writes, without waiting for it.
        """
        if not self.is_main_process:
            return self.checkpoint_dir / f"checkpoint-{self.step}"
        state = {**self.state.to_dict(), "max_steps": self.max_steps, "fingerprint": self.fingerprint,
                 "config": self.config.to_dict()}
        if self.world_size > 1:
            state["world_size"] = self.world_size
        names = [name for name, _ in self._named_params]
        best = dict(zip(names, self._best_params)) if self._best_params is not None else None
        weights = dict(self._named_params) if self.config.method == "full" else None
        return ckpt.save_run(self.checkpoint_dir, self.step, self.model, self.optimizer, state, best=best,
                             keep=self.config.keep_checkpoints, weights=weights)

    def _load_checkpoint(self, path: Path) -> None:
        """Restore the run from checkpoint ``path`` (already checked by :func:`.resume.checkpoint_to_resume`)."""
        params = dict(self._named_params) if self.config.method == "full" else None
        saved, best = ckpt.load_run(path, self.model, self.optimizer, self.device, params=params)
        cfg = self.config
        self.state = TrainingState.from_dict(saved)
        # the micro-batch an out-of-memory halving left is kept (a bigger one would fail again on the same GPU)
        self.state.micro_batch_size = max(cfg.min_micro_batch_size, min(cfg.micro_batch_size, self.micro_batch_size))
        if best is not None:
            self._best_params = [best[name].to(param.dtype) for name, param in self._named_params]
        self._resumed_from = path
        self.state.events.append({"step": self.step, "kind": "resumed", "message": f"resumed from {path.name}"})
        logger.info("resumed from %s at step %d of %d", path, self.step, self.max_steps)


def fine_tune(model: Any, tokenizer: Any, train_texts: TrainingData, eval_texts: TrainingData | None = None,
              config: FineTuneConfig | None = None, **options: Any) -> FineTuneResult:
    """Fine-tune ``model`` with LoRA on ``train_texts`` and return a :class:`FineTuneResult`.

    The model is wrapped in place (``result.model`` is the peft model, adapter attached). Texts are joined by
    EOS and cut into ``seq_len`` sequences. ``(prompt, completion)`` pairs (tuples, or dicts with ``"prompt"``
    and ``"completion"``) train on the completion only: one example per sequence (cut to ``seq_len``),
    right-padded, the prompt and padding masked out of the loss (see :mod:`.completions`); ``eval_texts`` may
    be pairs too. With ``eval_texts`` the eval loss and perplexity are measured every
    ``eval_every`` steps, early stopping is possible and the best adapter is restored at the end. Non-finite
    steps are skipped (then rolled back, learning rate and micro-batch halved), out-of-memory halves the
    micro-batch and retries the step, another CUDA error moves training to the CPU, and checkpoints are written
    atomically so that ``resume=True`` continues after a disconnect. A run whose every step was non-finite, or
    whose weights hold NaN, fails: one warning, ``stopped_reason="non_finite"``, ``result.failure`` says why, and
    no adapter is saved (``result.adapter_dir`` is None). ``options`` are :class:`FineTuner`'s:
    ``callbacks`` receive ``on_step_end``,
    ``on_eval``, ``on_event`` (see :mod:`colab_helpers.finetune.callbacks`); ``live_plot`` draws a
    :class:`~colab_helpers.LivePlot` saved as ``<output_dir>/training.png``; ``progress`` shows a tqdm bar.
    """
    return FineTuner(model, tokenizer, train_texts, eval_texts, config, **options).train()


def _check_full_training(model: Any) -> list[str]:
    """Return the adapter targets of a ``method="full"`` run (none); raise ValueError for a model that cannot be
    trained whole: one carrying a LoRA adapter, one loaded in 4 or 8 bit, or one with float16 weights."""
    import torch

    if hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "method='full' trains a plain model, and this one carries a LoRA adapter: fold it in first (model = "
            "merge_adapter(model)) or reload the base model; or keep training the adapter with method='lora'"
        )
    if is_quantized(model):
        raise ValueError(
            "method='full' cannot train a model loaded in 4 or 8 bit: load it unquantized, or use method='lora' "
            "(QLoRA)"
        )
    half = next((name for name, p in model.named_parameters() if p.dtype == torch.float16), None)
    if half is not None:  # GradScaler refuses float16 gradients, and AdamW's small updates vanish in float16
        raise ValueError(
            f"method='full' cannot train float16 weights ({half}, ...; load_model's default on GPUs older than "
            "the A100, e.g. a T4): load the model with load_model(name, dtype='float32'), or use method='lora'"
        )
    return []


def _writable_output_dir(path: Any) -> Path:
    """Return ``path`` created and checked writable; the error says what to pass instead."""
    try:
        return ensure_writable_dir(path)
    except (PermissionError, NotADirectoryError) as exc:
        raise type(exc)(
            f"output_dir {str(path)!r} is not writable ({exc}); pass output_dir= a directory you can "
            "write to, e.g. 'finetune' (on Colab a Drive folder survives a runtime reset)"
        ) from exc
