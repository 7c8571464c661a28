"""The guarded training loop: :class:`FineTuner` and :func:`fine_tune`.

Our own small loop over peft (AdamW, gradient clipping, atomic checkpoints) rather than transformers' ``Trainer``:
it moves a run to the CPU mid-``train()``, halves the micro-batch and retries a step, keeps non-finite gradients
from the optimizer and checkpoints atomically. A step's failures are the :class:`~.guard.FailureGuard`'s to handle;
a micro-batch's loss comes from one override point, :meth:`FineTuner._train_loss` (distillation:
:class:`~.distill.Distiller`). Under ``accelerate launch`` / ``torchrun`` every rank runs this loop
(:mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.cuda_fallback import is_cuda_oom
from ..runtime.modules import model_device
from . import checkpoint as ckpt
from .blocks import eval_blocks, total_steps, training_blocks
from .callbacks import Hooks, run_callbacks
from .completions import CompletionBatch, TrainingData, weight
from .config import FineTuneConfig
from .device import autocast, batch_inputs, run_to_cpu
from .distributed import check_same_model, join_device, remote_oom, setup_distributed
from .evaluator import Evaluator
from .guard import FailureGuard, GuardedRun, StopTraining, check_finite_weights
from .lora import adapter_targets, check_4bit, model_fingerprint, resolve_precision
from .outputs import CHECKPOINT_DIR, output_dir_for, save_trained, write_summary
from .result import FineTuneResult
from .resume import checkpoint_to_resume
from .state import TrainingState
from .trainable import check_full_training, make_trainable

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

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
        evaluation = eval_blocks(tokenizer, eval_texts, cfg)
        check_finite_weights(model, self.model_role)  # NaN weights: every step skipped; refused before any folder
        self._join_ranks(model)
        self.evaluator = Evaluator(evaluation, self._dist)
        # the steps asked for; a time budget (max_minutes) may end the run sooner: max_steps is the run's last step
        self.planned_steps = self.max_steps = total_steps(cfg, self._blocks, self.world_size, self.completion_only)
        # --- model ---
        self.tokenizer = tokenizer  # saved with the model of a method="full" run
        self._amp_dtype, use_scaler = resolve_precision(cfg.dtype, self.device)
        self._scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        if cfg.method == "full":
            check_full_training(model)
            self.targets, self.gated_left_out = [], []
        else:
            self.targets, self.gated_left_out = adapter_targets(model, cfg.target_modules)
        self.fingerprint = self._fingerprint(model)
        if self._dist is not None:
            check_same_model(self._dist, self.fingerprint)
        self.quantized = check_4bit(cfg, model, self.device)
        # --- the checkpoint to resume, checked before the model is touched (a mismatch leaves it as it was) ---
        with output_dir_for(cfg.output_dir) as self.output_dir:  # a folder made for a failed set-up is removed
            self.checkpoint_dir = self.output_dir / CHECKPOINT_DIR
            resume_from = checkpoint_to_resume(self.checkpoint_dir, self.fingerprint, resume=cfg.resume,
                                               distributed=self._dist)  # fmt: skip
            self.model, self.backend, self._named_params = make_trainable(model, cfg, self.targets, self.device,
                                                                          quantized=self.quantized)  # fmt: skip
        self.params = [p for _, p in self._named_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # --- run state: the counters go into checkpoints; the guard keeps the rollback snapshots ---
        self.state = TrainingState(micro_batch_size=cfg.micro_batch_size)
        self._updating = False
        self._user_callbacks, self._live_plot, self._progress = list(callbacks), live_plot, progress
        self._callbacks: list[Any] = []  # those installed by train(), the live plot and progress bar included
        self._hooks = Hooks()
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self.guard = FailureGuard(self._guarded_run())
        if self._dist is not None:  # same start everywhere, whatever each rank's seed or adapter was
            self._dist.broadcast_parameters(self.params)

    def _join_ranks(self, model: Any) -> None:
        """Set the run's device and ranks: a data-parallel run (accelerate launch / torchrun) joins its process
        group here; a plain single process is rank 0 of 1."""
        self.device = model_device(model)
        self._dist = setup_distributed(self.device)
        self.rank = self._dist.rank if self._dist is not None else 0
        self.world_size = self._dist.world_size if self._dist is not None else 1
        self.is_main_process = self.rank == 0  # the rank that writes files and shows progress
        if self._dist is not None:
            self.device = join_device(self._dist, model, self.device)

    def _guarded_run(self) -> GuardedRun:
        """Return what the failure guard may see and do of this run."""
        return GuardedRun(
            config=self.config, state=self.state, model=self.model, params=self.params, optimizer=self.optimizer,
            record_event=self.record_event, save_checkpoint=self.save_checkpoint, move_to_cpu=self.move_to_cpu,
            checkpoint_dir=self.checkpoint_dir, output_dir=self.output_dir, quantized=self.quantized,
            rank=self.rank if self._dist is not None else None,
        )  # fmt: skip

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

    def _emit(self, hook: str, *args: Any) -> None:
        self._hooks(hook, self, *args)

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
            self._callbacks = run_callbacks(self._user_callbacks, self.output_dir, self.config,
                                            main_process=self.is_main_process, max_steps=self.max_steps,
                                            step=self.step, live_plot=self._live_plot, progress=self._progress)
            self._hooks = Hooks(self._callbacks)
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
        first_step = self.step
        while self.step < self.max_steps:
            step = self.step + 1
            row = self._train_step(step)
            self.state.step = step
            self._updating = False
            if cfg.max_minutes is not None:  # before the callbacks: the progress bar shows the re-planned total
                self._fit_time_budget(cfg.max_minutes, step - first_step)
            self.state.history.append(row)
            self._emit("on_step_end", row)
            self.guard.after_step(row)
            if self.evaluator.enabled and step % cfg.eval_every == 0:
                self._evaluate_into(row)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.max_steps:
                self.save_checkpoint()
        if self.step < self.planned_steps:
            raise StopTraining("max_minutes")

    def _fit_time_budget(self, minutes: float, done: int) -> None:
        """Set the run's last step to the one the budget reaches at this session's pace (``done`` steps so far,
        evaluations included), never past the steps asked for: the cosine decay then ends with the budget instead
        of being cut off half-way. Rank 0's clock decides for every rank (they must stop at the same step)."""
        spent = self.state.elapsed()
        pace = (spent - self.state.elapsed_seconds) / done  # this session's seconds per step
        last = self.step + max(0, int((minutes * 60 - spent) / pace)) if pace > 0 else self.planned_steps
        if self._dist is not None:
            last = self._dist.broadcast_object(last)
        self.max_steps = max(self.step, min(self.planned_steps, last))

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self._checkpoint_on_interrupt()
        for fn in self._hooks.functions("on_train_error"):  # e.g. save the plot of what happened so far
            try:
                fn(self, exc)
            except Exception as callback_error:  # never hide the original error behind a callback's
                logger.warning("on_train_error callback failed: %s", callback_error)

    def _finish(self, reason: str) -> FineTuneResult:
        """Evaluate the last step, checkpoint, restore the best adapter, save it and return the result."""
        needs_eval = self.evaluator.enabled and self.history and "eval_loss" not in self.history[-1]
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
        if self.config.restore_best and self.evaluator.restore_best(self.params):
            logger.info("restored the adapter of step %s (best eval loss %.4f)", state.best_step, state.best_eval_loss)
        adapter_dir, model_dir = (None, None) if failure else save_trained(
            self.model, self.tokenizer, self.output_dir, full=self.config.method == "full", write=self.is_main_process)
        result = FineTuneResult(
            model=self.model, history=state.history, events=state.events, best_step=state.best_step,
            best_eval_loss=state.best_eval_loss, seconds=seconds, steps=state.step, stopped_reason=reason,
            device=str(self.device), world_size=self.world_size, backend=self.backend, output_dir=self.output_dir,
            checkpoint_dir=last, adapter_dir=adapter_dir, failure=failure, model_dir=model_dir,
        )  # fmt: skip
        self.model.eval()
        self._emit("on_train_end", result)
        if self.is_main_process:
            write_summary(result, self.output_dir)
        if self._dist is not None:
            self._dist.barrier()  # when train() returns on any rank, rank 0's files are all there
        return result

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

    def _inputs(self, chunk: torch.Tensor | CompletionBatch) -> tuple[torch.Tensor, ...]:
        """Return ``(input_ids, attention_mask, labels)`` of a micro-batch on the run's device."""
        return batch_inputs(chunk, self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Return the run's mixed-precision context (none in fp32, e.g. on the CPU)."""
        return autocast(self.device, self._amp_dtype)

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
        self.device = run_to_cpu(self.model, self.optimizer)
        self.evaluator.move_to(self.device)
        self._amp_dtype, self._scaler = None, None

    # --- evaluation and early stopping -------------------------------------------------------------------

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """Evaluate, merge ``eval_loss`` and ``eval_ppl`` into ``row``, track the best, maybe stop early."""
        while True:
            try:
                loss = self.evaluator.loss(self.model, self._loss, self.micro_batch_size, self.device)
                break
            except Exception as exc:
                self.guard.recover(exc, row["step"])
        row["eval_loss"] = loss
        row["eval_ppl"] = math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf
        self._emit("on_eval", row)
        stop = self.evaluator.observe(self.state, loss, row["step"], self.params, self.config.early_stopping_patience)
        if stop is not None:
            self.record_event(row["step"], "early_stop", stop, best_step=self.state.best_step)
            raise StopTraining("early_stopping")

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
        best_params = self.evaluator.best_params
        best = dict(zip(names, best_params)) if best_params is not None else None
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
            self.evaluator.best_params = [best[name].to(param.dtype) for name, param in self._named_params]
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
