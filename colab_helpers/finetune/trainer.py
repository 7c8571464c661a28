"""The guarded LoRA training loop: :class:`FineTuner` and :func:`fine_tune`.

Our own small loop over peft (AdamW, gradient clipping, explicit atomic checkpoints), not transformers'
``Trainer``, because a ``Trainer`` cannot change device mid-``train()`` (a CUDA error must let the same run go on
on the CPU), cannot halve the micro-batch and retry a step on OOM, filters NaN only from the *logged* loss
(non-finite gradients still reach the optimizer), and writes checkpoints in place (a kill mid-save leaves a
broken "latest"). Plots and tracking attach from outside through minGPT-style callbacks (:mod:`.callbacks`).

One step: the step's sequences (``micro_batch_size x accumulation``, fixed by the step number so a resumed or
retried step sees the same data) go through forward and backward in micro-batches; gradients are clipped; one
host sync reads the loss and the gradient norm; a non-finite value skips the update. Costs per step beyond a
plain loop: that one sync, a dict for the history row, and every ``snapshot_every`` good steps a copy of the
LoRA weights and their AdamW moments (small: LoRA only).

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs on every rank: each rank trains on
its own share of the step's sequences, one all-reduce averages gradients and loss (:mod:`.distributed`), so every
guard decides the same on every rank; rank 0 alone writes files and shows progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.modules import model_device
from ..runtime.files import atomic_write_text, ensure_writable_dir
from ..errors import ColabHelpersWarning, CudaFallbackWarning
from ..runtime.cuda_fallback import is_cuda_error, is_cuda_oom
from ..runtime.records import to_jsonable
from . import checkpoint as ckpt
from .callbacks import LivePlotCallback, ProgressCallback
from .completions import CompletionBatch, TrainingData, as_pairs, tokenize_pairs, weight
from .config import FineTuneConfig
from .distributed import setup_distributed
from .lora import attach_lora, check_4bit, choose_backend, fingerprint_differences, hooked_modules, is_quantized, model_fingerprint, resolve_precision, resolve_targets, trainable_parameters

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
PLOT_FILE = "training.png"
SUMMARY_FILE = "history.json"
_CALLBACK_HOOKS = ("on_train_begin", "on_step_end", "on_eval", "on_event", "on_train_end", "on_train_error")


@dataclass
class FineTuneResult:
    """What a run produced: the peft model, per-step history, events, best evaluation and where files went."""

    model: Any = field(repr=False)  # the peft model, adapter attached (the best one when restore_best)
    history: list[dict[str, Any]] = field(repr=False)  # one dict per step, eval metrics merged into their step
    events: list[dict[str, Any]] = field(repr=False)  # NaN skips, rollbacks, halvings, fallbacks, stops
    best_step: int | None
    best_eval_loss: float | None
    seconds: float  # training time of this call (a resumed run: only the part after the resume)
    steps: int  # last step done
    stopped_reason: str  # "max_steps", "early_stopping", "non_finite", or "resumed_finished"
    device: str
    backend: str
    output_dir: Path
    checkpoint_dir: Path | None = None  # newest complete checkpoint
    adapter_dir: Path | None = None  # final adapter (peft format: PeftModel.from_pretrained(base, adapter_dir))
    plot_path: Path | None = None
    world_size: int = 1  # processes that trained together (data-parallel under accelerate launch / torchrun)

    @property
    def final_loss(self) -> float | None:
        """Return the training loss of the last step that was not skipped (None if none)."""
        losses = [r["loss"] for r in self.history if not r["skipped"]]
        return losses[-1] if losses else None

    def summary(self) -> str:
        """One line: steps, time, device and backend, losses, why it stopped, events."""
        best = f"; best eval loss {self.best_eval_loss:.4f} at step {self.best_step}" if self.best_eval_loss is not None else ""
        final = f"; final train loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        return (
            f"{self.steps} steps in {self.seconds:.1f} s on {self.device}{self._processes()} ({self.backend})"
            f"{final}{best}; "
            f"stopped: {self.stopped_reason}; {len(self.events)} events (NaN skips, rollbacks, fallbacks)"
        )

    def _processes(self) -> str:
        return f" x {self.world_size} processes" if self.world_size > 1 else ""

    def _repr_markdown_(self) -> str:
        plot = f" · plot: `{self.plot_path}`" if self.plot_path else ""
        return f"**Fine-tuning** · {self.summary()}{plot}"

    def history_frame(self) -> Any:
        """Return the history as a pandas DataFrame indexed by step."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("step") if self.history else pd.DataFrame()

    def to_dict(self) -> dict[str, Any]:
        """Return everything but the model as JSON-serializable data."""
        return {
            "history": self.history,
            "events": self.events,
            "best_step": self.best_step,
            "best_eval_loss": self.best_eval_loss,
            "seconds": self.seconds,
            "steps": self.steps,
            "stopped_reason": self.stopped_reason,
            "device": self.device,
            "world_size": self.world_size,
            "backend": self.backend,
            "output_dir": str(self.output_dir),
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "plot_path": str(self.plot_path) if self.plot_path else None,
        }

    def __str__(self) -> str:
        best = f", best eval loss {self.best_eval_loss:.4f} at step {self.best_step}" if self.best_step else ""
        skipped = sum(1 for r in self.history if r["skipped"])
        return (
            f"{self.steps} steps ({self.stopped_reason}) in {self.seconds:.1f} s on {self.device}, "
            f"final loss {self.final_loss if self.final_loss is None else round(self.final_loss, 4)}{best}, "
            f"{skipped} skipped, {len(self.events)} events"
        )


class _Blocks:
    """Training sequences, visited in a seeded order per epoch: the token stream cut into ``seq_len`` blocks
    (:func:`_cut`), or the padded examples of (prompt, completion) pairs (a :class:`CompletionBatch`).

    The sequences of a step depend only on the step number, so a resumed or retried step trains on exactly the
    same data without any data-loader state to save.
    """

    def __init__(self, blocks: torch.Tensor | CompletionBatch, seed: int) -> None:
        self.blocks = blocks
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def _order(self, epoch: int) -> torch.Tensor:
        import torch

        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders[epoch] = torch.randperm(len(self), generator=generator)
        return self._orders[epoch]

    def for_step(self, step: int, count: int) -> torch.Tensor | CompletionBatch:
        """Return the ``count`` sequences of (1-based) ``step`` (``[count, seq_len]`` for plain blocks)."""
        import torch

        n = len(self)
        first = (step - 1) * count
        parts = []
        position = first
        while position < first + count:
            epoch, offset = divmod(position, n)
            take = min(n - offset, first + count - position)
            parts.append(self._order(epoch)[offset : offset + take])
            position += take
        return self.blocks[torch.cat(parts)]


class _Stop(Exception):
    """Raised inside the loop to end training early with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FineTuner:
    """A LoRA fine-tuning run that survives NaNs, out-of-memory, CUDA failures and disconnects; see :func:`fine_tune`.

    Construction checks everything that can be checked before training (settings, text length, output dir,
    target modules, a checkpoint to resume) and attaches the adapter; :meth:`train` runs the loop.
    """

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
        try:
            self.output_dir = ensure_writable_dir(cfg.output_dir)
        except (PermissionError, NotADirectoryError) as exc:
            raise type(exc)(
                f"output_dir {str(cfg.output_dir)!r} is not writable ({exc}); pass output_dir= a directory you can "
                "write to, e.g. 'finetune' (on Colab a Drive folder survives a runtime reset)"
            ) from exc
        self.checkpoint_dir = self.output_dir / CHECKPOINT_DIR
        # --- data: checked before any model work, so a bad input fails fast ---
        train_texts, eval_texts = _materialize(train_texts), _materialize(eval_texts)
        self.completion_only = (train_pairs := as_pairs(train_texts, "train_texts")) is not None  # prompts masked
        if train_pairs is not None:
            self._blocks = _Blocks(tokenize_pairs(tokenizer, train_pairs, cfg.seq_len, "train_texts"), cfg.seed)
        else:
            train_ids = self._tokens(tokenizer, train_texts, "train_texts", cfg.micro_batch_size)
            self._blocks = _Blocks(_cut(train_ids, cfg.seq_len), cfg.seed)
        self._eval_blocks = None
        if eval_texts is not None:
            eval_pairs = as_pairs(eval_texts, "eval_texts")
            if eval_pairs is not None:
                blocks = tokenize_pairs(tokenizer, eval_pairs, cfg.seq_len, "eval_texts")
            else:
                blocks = _cut(self._tokens(tokenizer, eval_texts, "eval_texts", 1), cfg.seq_len)
            self._eval_blocks = blocks[: cfg.eval_batches * cfg.micro_batch_size]
        elif cfg.early_stopping_patience is not None:
            raise ValueError("early_stopping_patience needs eval_texts: pass eval_texts, or early_stopping_patience=None")
        # --- data-parallel run (accelerate launch / torchrun); None in a plain single process ---
        self.device = model_device(model)
        self._dist = setup_distributed(self.device)
        self.rank = self._dist.rank if self._dist is not None else 0
        self.world_size = self._dist.world_size if self._dist is not None else 1
        self.is_main_process = self.rank == 0  # the rank that writes files and shows progress
        if self._dist is not None:
            self._join_devices(model)
            if self._eval_blocks is not None:  # each rank scores a disjoint share; the mean is over all of them
                self._eval_total = weight(self._eval_blocks)
                self._eval_blocks = self._eval_blocks[self.rank :: self.world_size]
        self.max_steps = self._total_steps()
        # --- model ---
        self._amp_dtype, use_scaler = resolve_precision(cfg.dtype, self.device)
        self._scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        from peft import PeftModel

        self.gated_left_out: list[str] = []
        if isinstance(model, PeftModel):  # continue training the adapter it carries
            logger.info("the model carries a LoRA adapter: training it (the config's r, alpha, dropout, targets unused)")
            targets = [n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")]
        else:
            if any(hasattr(m, "lora_A") for m in model.modules()):
                raise ValueError(
                    "the model already carries LoRA layers, probably from an earlier fine_tune call (it wraps the "
                    "model in place): pass that call's result.model to keep training it, or reload the base model"
                )
            targets, self.gated_left_out = resolve_targets(model, cfg.target_modules)
        self.targets = targets
        self.fingerprint = self._fingerprint(model, targets)
        if self._dist is not None:
            self._check_same_model_on_every_rank()
        # --- the checkpoint to resume, checked before the model is touched (a mismatch leaves it as it was) ---
        resume_from = self._checkpoint_to_resume()
        self.quantized = check_4bit(cfg, model, self.device)
        if isinstance(model, PeftModel):
            self.model, self.backend = model, "peft"
        else:
            backend = choose_backend(cfg, model, self.device, gated=bool(hooked_modules(model)))
            torch.manual_seed(cfg.seed)  # LoRA initialisation
            self.model, self.backend = attach_lora(model, cfg, targets, backend, quantized=self.quantized)
        self._named_params = trainable_parameters(self.model)
        if not self._named_params:
            raise ValueError(
                "the model has no trainable parameters: check target_modules, or load a saved adapter with "
                "PeftModel.from_pretrained(base, path, is_trainable=True)"
            )
        self._params = [p for _, p in self._named_params]
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # --- run state (all of it goes into checkpoints) ---
        self.step = 0  # last step completed
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.lr_scale = 1.0
        self.micro_batch_size = cfg.micro_batch_size
        self.nan_streak = 0
        self.rollbacks = 0
        self._rolled_back_without_progress = False
        self.best_step: int | None = None
        self.best_eval_loss: float | None = None
        self._evals_without_improvement = 0
        self._best_params: list[torch.Tensor] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._good_since_snapshot = 0
        self._fell_back = False
        self._warned_fallback = False
        self._elapsed_before = 0.0  # seconds trained by earlier sessions of this run (from the checkpoint)
        self._run_started: float | None = None
        self._updating = False
        self._resumed_from: Path | None = None
        # --- callbacks ---
        self._user_callbacks = list(callbacks)
        self._live_plot = live_plot
        self._progress = progress
        self._callbacks: list[Any] = []
        self._hooks: dict[str, list[Callable[..., None]]] = {}
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        if self._dist is not None:  # same start everywhere, whatever each rank's seed or adapter was
            self._dist.broadcast_parameters(self._params)

    # --- set-up ------------------------------------------------------------------------------------------

    def _tokens(self, tokenizer: Any, texts: Any, what: str, sequences: int) -> torch.Tensor:
        """Return the token ids of ``texts``; raise ValueError when they cannot fill ``sequences`` x seq_len."""
        from ..evaluation.perplexity import tokenize_texts

        seq_len = self.config.seq_len
        needed = sequences * seq_len
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError(
                f"{what} is empty: one micro-batch of {sequences} x seq_len={seq_len} needs {needed} tokens; "
                "pass a list of strings, e.g. load_text_dataset('embedded').train"
            )
        ids = tokenize_texts(tokenizer, texts)
        if ids.numel() < needed:
            raise ValueError(
                f"{what} has {ids.numel()} tokens, but one micro-batch of {sequences} x seq_len={seq_len} needs "
                f"{needed}; pass more text, or lower seq_len{' / micro_batch_size' if sequences > 1 else ''}"
            )
        return ids

    def _total_steps(self) -> int:
        cfg = self.config
        if cfg.epochs is None:
            return int(cfg.max_steps)
        steps = max(1, math.ceil(cfg.epochs * len(self._blocks) / (cfg.effective_batch_size * self.world_size)))
        unit = "(prompt, completion) examples of at most" if self.completion_only else "sequences of"
        logger.info("epochs=%s over %d %s %d tokens: %d steps", cfg.epochs, len(self._blocks), unit, cfg.seq_len, steps)
        return steps

    def _fingerprint(self, model: Any, targets: list[str]) -> dict[str, Any]:
        config = self.config.fingerprint_fields()
        if self.world_size > 1:  # sequences per optimizer step over all ranks: what is trained
            config["effective_batch_size"] *= self.world_size
        if self.completion_only:  # a different objective: a plain-text checkpoint cannot go on with pairs, nor back
            config["data"] = "completions"
        return {"model": model_fingerprint(model, targets), "config": config}

    # --- data-parallel set-up ----------------------------------------------------------------------------

    def _join_devices(self, model: Any) -> None:
        """Under nccl, put the model on this rank's GPU (``cuda:LOCAL_RANK``); a 4-bit model must be loaded there."""
        assert self._dist is not None
        target = self._dist.device
        if target.type != "cuda" or self.device == target:
            return
        if is_quantized(model):
            raise ValueError(
                f"rank {self.rank}: the 4-bit model is on {self.device}, but this rank trains on {target}: load it "
                f"there, e.g. load_model(name, load_in_4bit=True, device='cuda:{self._dist.local_rank}') (LOCAL_RANK)"
            )
        logger.info("rank %d: moving the model from %s to %s", self.rank, self.device, target)
        model.to(target)
        self.device = target

    def _check_same_model_on_every_rank(self) -> None:
        """Raise ValueError when a rank's base model or settings differ from rank 0's (no sense in averaging)."""
        assert self._dist is not None
        prints = self._dist.gather_object(self.fingerprint)
        for rank, other in enumerate(prints[1:], start=1):
            diffs = fingerprint_differences(prints[0], other)
            if diffs:
                raise ValueError(
                    f"rank {rank} trains a different model or config than rank 0 ({'; '.join(diffs)}): load the same "
                    "weights with the same settings on every rank (seed before building a random model)"
                )

    def _checkpoint_to_resume(self) -> Path | None:
        """Return the checkpoint to resume (checked against this model and config), or None to start over.

        With ``resume=False`` the old checkpoints of ``output_dir`` are deleted (one warning says so). In a
        data-parallel run rank 0 alone cleans up and picks the checkpoint; every rank resumes that one.
        """
        if self.is_main_process:
            ckpt.remove_stale(self.checkpoint_dir)
        if not self.config.resume:
            removed = ckpt.remove_all(self.checkpoint_dir) if self.is_main_process else []
            if removed:
                warnings.warn(
                    f"resume=False: deleted {len(removed)} old checkpoint(s) in {self.checkpoint_dir} "
                    "(pass resume=True to continue a run instead)",
                    ColabHelpersWarning,
                    stacklevel=4,
                )
            return None
        latest = ckpt.latest_checkpoint(self.checkpoint_dir) if self.is_main_process else None
        if self._dist is not None:
            chosen = self._dist.broadcast_object(str(latest) if latest is not None else None)
            latest = Path(chosen) if chosen is not None else None
        if latest is None:
            logger.info("resume=True but no complete checkpoint in %s: starting from step 0", self.checkpoint_dir)
            return None
        diffs = fingerprint_differences(ckpt.read_state(latest).get("fingerprint", {}), self.fingerprint)
        if diffs:
            raise ValueError(
                f"cannot resume from {latest}: it was written for a different model or config "
                f"(checkpoint vs now: {'; '.join(diffs)}). Pass a new output_dir to start a separate run, or "
                f"resume=False to start over in {self.output_dir} (its checkpoints are deleted)"
            )
        return latest

    # --- callbacks ---------------------------------------------------------------------------------------

    def _install_callbacks(self) -> None:
        callbacks = list(self._user_callbacks)  # on every rank: they can check tuner.is_main_process
        if self._progress and self.is_main_process:
            callbacks.append(ProgressCallback(self.max_steps, initial=min(self.step, self.max_steps)))
        if self._live_plot and self.is_main_process:
            callbacks.append(LivePlotCallback(self.output_dir / PLOT_FILE, min_interval=self.config.plot_every_seconds,
                                               title=self.config.plot_title))
        self._callbacks = callbacks
        self._hooks = {
            name: [getattr(cb, name) for cb in callbacks if callable(getattr(cb, name, None))] for name in _CALLBACK_HOOKS
        }

    def _emit(self, hook: str, *args: Any) -> None:
        for fn in self._hooks.get(hook, ()):
            fn(self, *args)

    def _event(self, step: int, kind: str, message: str, **extra: Any) -> None:
        """Record an event of ``step``, log it, and pass it to the callbacks."""
        event = {"step": step, "kind": kind, "message": message, **extra}
        self.events.append(event)
        level = logging.INFO if kind in ("nan_skip", "resumed", "early_stop") else logging.WARNING
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
            cfg = self.config
            self._run_started = time.perf_counter()
            self._install_callbacks()
            self._emit("on_train_begin")
            reason = "max_steps" if self.step < self.max_steps else "resumed_finished"
            self.model.train()
            self._take_snapshot()
            if self.rank > 0:  # own dropout masks per rank (rank 0 keeps the stream a checkpoint restores)
                import torch

                torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + self.rank)
            try:
                while self.step < self.max_steps:
                    step = self.step + 1
                    row = self._train_step(step)
                    self.step = step
                    self._updating = False
                    self.history.append(row)
                    self._emit("on_step_end", row)
                    self._after_step(row)
                    if self._eval_blocks is not None and step % cfg.eval_every == 0:
                        self._evaluate_into(row)
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.max_steps:
                        self._save_checkpoint()
            except _Stop as stop:
                reason = stop.reason
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    self._checkpoint_on_interrupt()
                for fn in self._hooks.get("on_train_error", ()):  # e.g. save the plot of what happened so far
                    try:
                        fn(self, exc)
                    except Exception as callback_error:  # never hide the original error behind a callback's
                        logger.warning("on_train_error callback failed: %s", callback_error)
                raise
            needs_eval = self._eval_blocks is not None and self.history and "eval_loss" not in self.history[-1]
            if needs_eval and reason != "resumed_finished":
                with contextlib.suppress(_Stop):  # the run is over anyway: patience running out here changes nothing
                    self._evaluate_into(self.history[-1])
            seconds = time.perf_counter() - self._run_started
            finished = reason == "resumed_finished"
            last = ckpt.latest_checkpoint(self.checkpoint_dir) if finished else self._save_checkpoint()
            self._elapsed_before, self._run_started = self._elapsed(), None
            if cfg.restore_best and self._best_params is not None:
                self._load_params(self._best_params)
                best_step, best_loss = self.best_step, self.best_eval_loss
                logger.info("restored the adapter of step %s (best eval loss %.4f)", best_step, best_loss)
            from .export import save_adapter

            adapter_dir = self.output_dir / ADAPTER_DIR
            if self.is_main_process:
                adapter_dir = save_adapter(self.model, adapter_dir)
            result = FineTuneResult(
                model=self.model,
                history=self.history,
                events=self.events,
                best_step=self.best_step,
                best_eval_loss=self.best_eval_loss,
                seconds=seconds,
                steps=self.step,
                stopped_reason=reason,
                device=str(self.device),
                world_size=self.world_size,
                backend=self.backend,
                output_dir=self.output_dir,
                checkpoint_dir=last,
                adapter_dir=adapter_dir,
            )
            self.model.eval()
            self._emit("on_train_end", result)
            if self.is_main_process:
                summary = json.dumps(to_jsonable(result.to_dict()), indent=1, allow_nan=False)
                atomic_write_text(self.output_dir / SUMMARY_FILE, summary + "\n")
            if self._dist is not None:
                self._dist.barrier()  # when train() returns on any rank, rank 0's files are all there
            return result
        finally:
            if self._dist is not None:
                self._dist.close()  # only a process group we created; one from accelerate stays open

    def _elapsed(self) -> float:
        """Return the training seconds of the whole run so far (earlier sessions included)."""
        running = time.perf_counter() - self._run_started if self._run_started is not None else 0.0
        return self._elapsed_before + running

    def _checkpoint_on_interrupt(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self._updating:  # stopped inside the optimizer update: the weights belong to no step
            logger.warning("interrupted during an optimizer update: not checkpointing; resume from the last checkpoint")
            return
        try:
            path = self._save_checkpoint()
        except BaseException as exc:  # a second Ctrl-C or a full disk: the previous checkpoint stays valid
            logger.warning("interrupted; could not write a checkpoint (%s)", exc)
            return
        logger.warning("interrupted at step %d: checkpoint %s written; run again with resume=True", self.step, path)

    def _train_step(self, step: int) -> dict[str, Any]:
        """Run one guarded optimizer step and return its history row."""
        import torch

        cfg = self.config
        sequences = self._blocks.for_step(step, cfg.effective_batch_size * self.world_size)
        if self.world_size > 1:  # the step's sequences of all ranks, dealt out: disjoint shards
            sequences = sequences[self.rank :: self.world_size]
        while True:
            try:
                loss_sum, grad_norm = self._forward_backward(sequences)
                # the one host sync of the step: loss and gradient norm together
                loss, norm = torch.stack([loss_sum, grad_norm.to(loss_sum.device, torch.float32)]).tolist()
                break
            except Exception as exc:
                self.optimizer.zero_grad(set_to_none=True)
                if self._scaler is not None:  # forget a half-done unscale_ of the failed attempt
                    with contextlib.suppress(Exception):
                        self._scaler = type(self._scaler)(self.device.type, init_scale=self._scaler.get_scale())
                self._recover(exc, step)
        lr = cfg.learning_rate * self.lr_scale * self._schedule(step)
        finite = math.isfinite(loss) and math.isfinite(norm)
        skipped = not finite
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._updating = True  # until train() records the step: an interrupt now leaves weights of no step
            if self._scaler is not None:
                self._scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        row = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "micro_batch_size": self.micro_batch_size,
            "skipped": skipped,
            "device": self.device.type,
            "seconds": self._elapsed(),
        }
        if self._scaler is not None:
            if skipped and math.isfinite(loss):
                # fp16 gradients overflowed at this loss scale: GradScaler's own business (it lowers the scale),
                # not a sign of divergence, so it does not count towards the NaN rollback
                row["overflow"] = True
            self._scaler.update()
        if finite and cfg.save_gradients and self.is_main_process and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            from .gradients import save_gradients

            save_gradients(self.output_dir / "gradients", self.model, step)  # the step's clipped, unscaled gradients
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def _forward_backward(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate gradients over the step's micro-batches; return (mean loss, clipped-gradient norm) as tensors."""
        import torch

        total = weight(sequences)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        failure: BaseException | None = None
        try:
            for chunk in sequences.split(self.micro_batch_size):
                loss = self._loss(chunk)
                # exact mean over the step: blocks have equal lengths; pairs weigh by their completion tokens
                weighted = loss.float() * (weight(chunk) / total)
                (self._scaler.scale(weighted) if self._scaler is not None else weighted).backward()
                loss_sum += weighted.detach()
        except Exception as exc:
            if self._dist is None or not is_cuda_oom(exc):
                raise  # single process: handled by _train_step; several: the launcher stops every rank
            failure = exc  # the other ranks wait in the all-reduce below: tell them, and all retry smaller
        if self._dist is not None:
            # scaled gradients are averaged before unscale_: every rank then sees the same values, so GradScaler's
            # inf check, the clipped norm and the non-finite skip below agree on every rank without another sync
            loss_sum, failures = self._dist.average_gradients(self._params, loss_sum, failed=failure is not None)
            if failures:
                raise failure or _remote_oom(failures, self.micro_batch_size)
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.config.max_grad_norm)
        return loss_sum, grad_norm

    def _loss(self, chunk: torch.Tensor | CompletionBatch) -> torch.Tensor:
        """Return the mean loss of one micro-batch: over every token of plain blocks, over the completion tokens
        of (prompt, completion) examples (labels -100 on prompt and padding)."""
        import torch

        if isinstance(chunk, CompletionBatch):
            batch = chunk.to(self.device, non_blocking=True)
            with self._autocast():
                return self.model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, use_cache=False
                ).loss
        ids = chunk.to(self.device, non_blocking=True)
        with self._autocast():
            mask = torch.ones_like(ids)
            return self.model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss

    def _autocast(self) -> Any:
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

    # --- surviving failures ------------------------------------------------------------------------------

    def _recover(self, exc: BaseException, step: int) -> None:
        """Handle an exception of a step or an evaluation so that it can be retried; re-raise what cannot."""
        if is_cuda_oom(exc):
            self._halve_for_oom(exc, step)
        elif is_cuda_error(exc) and self._dist is not None:
            # the other ranks train on their GPUs through nccl: this one cannot go on alone on the CPU
            raise RuntimeError(
                f"rank {self.rank}: CUDA error in a data-parallel run ({exc}); the launcher stops every rank. Fix the "
                f"cause and launch again with resume=True (checkpoints in {self.checkpoint_dir})"
            ) from exc
        elif is_cuda_error(exc) and not self._fell_back:
            self._fallback_to_cpu(exc, step)
        else:
            raise exc

    def _halve_for_oom(self, exc: BaseException, step: int) -> None:
        from ..runtime.memory import free_memory

        cfg = self.config
        if self.micro_batch_size <= cfg.min_micro_batch_size:
            with contextlib.suppress(Exception):
                self._save_checkpoint()
            raise RuntimeError(
                f"out of memory at micro_batch_size={self.micro_batch_size}, the floor (min_micro_batch_size="
                f"{cfg.min_micro_batch_size}): lower seq_len (now {cfg.seq_len}), use load_in_4bit=True or a smaller "
                f"model; the run is checkpointed, resume it with resume=True"
            ) from exc
        free_memory(self.output_dir)
        old = self.micro_batch_size
        self.micro_batch_size = max(cfg.min_micro_batch_size, old // 2)
        accumulation = math.ceil(cfg.effective_batch_size / self.micro_batch_size)
        self._event(
            step,
            "oom_retry",
            f"out of memory at micro-batch {old}: retrying with micro-batch {self.micro_batch_size} x "
            f"{accumulation} accumulation (effective batch {cfg.effective_batch_size} kept)",
            micro_batch_size=self.micro_batch_size,
        )

    def _fallback_to_cpu(self, exc: BaseException, step: int) -> None:
        """Checkpoint, move model and optimizer to the CPU, warn once, and let the failed step be retried there."""
        import torch

        from ..runtime.cuda_fallback import CudaFallbackError, _short

        try:
            self._save_checkpoint()
        except Exception as save_error:  # a dead CUDA context cannot even be copied: the last checkpoint stays
            logger.warning("could not checkpoint after the CUDA error (%s)", _short(save_error))
        if self.quantized:
            raise CudaFallbackError(
                f"{_short(exc)}: a 4-bit model cannot move to the CPU. Restart the runtime and run again with "
                f"resume=True (checkpoints in {self.checkpoint_dir})"
            ) from exc
        cpu = torch.device("cpu")
        try:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            self.model.to(cpu)
            if any(p.dtype in (torch.float16, torch.bfloat16) for p in self.model.parameters()):
                self.model.float()  # half-precision matmuls on the CPU are slow or missing
            _move_optimizer_state(self.optimizer, cpu)
            if self._snapshot is not None:
                self._snapshot = _to_device(self._snapshot, cpu)
            if self._best_params is not None:
                self._best_params = _to_device(self._best_params, cpu)
        except Exception as move_error:
            raise CudaFallbackError(
                f"{_short(exc)}, and moving the model to the CPU failed too ({_short(move_error)}): restart the "
                f"runtime and run again with resume=True (checkpoints in {self.checkpoint_dir})"
            ) from exc
        self.device, self._amp_dtype, self._scaler = cpu, None, None
        self._fell_back = True
        if not self._warned_fallback:
            self._warned_fallback = True
            warnings.warn(
                f"training failed on CUDA ({_short(exc)}); checkpointed at step {self.step} and continuing on the "
                "CPU (slower). Restart the runtime and resume=True to use the GPU again.",
                CudaFallbackWarning,
                stacklevel=4,
            )
        self._event(step, "cpu_fallback", f"CUDA error ({_short(exc)}): continuing on the CPU", error=_short(exc))

    def _after_step(self, row: dict[str, Any]) -> None:
        """Count good and non-finite steps; snapshot, roll back, halve or stop as the ladder says."""
        cfg = self.config
        if row.get("overflow"):
            logger.debug("step %d: fp16 gradient overflow, loss scale lowered", row["step"])
            return
        if not row["skipped"]:
            self.nan_streak = 0
            self._rolled_back_without_progress = False
            self._good_since_snapshot += 1
            if self._good_since_snapshot >= cfg.snapshot_every:
                self._take_snapshot()
            return
        self.nan_streak += 1
        self._good_since_snapshot = 0
        self._event(
            self.step,
            "nan_skip",
            f"non-finite {'loss' if not math.isfinite(row['loss']) else 'gradients'}: step skipped "
            f"({self.nan_streak} in a row)",
            loss=row["loss"],
            grad_norm=row["grad_norm"],
        )
        if self.nan_streak < cfg.nan_skip_patience:
            return
        self.nan_streak = 0
        self.rollbacks += 1
        snapshot_step = self._snapshot["step"] if self._snapshot else 0
        if self.rollbacks > cfg.max_rollbacks:
            self._restore_snapshot()
            message = (
                f"training stopped: non-finite loss or gradients persisted after {cfg.max_rollbacks} rollback(s) "
                f"(learning rate now x{self.lr_scale:g}, micro-batch {self.micro_batch_size}); the adapter of step "
                f"{snapshot_step} is kept. Lower learning_rate, use dtype='fp32', or check the data"
            )
            self._event(self.step, "stopped", message)
            warnings.warn(message, ColabHelpersWarning, stacklevel=4)
            raise _Stop("non_finite")
        self._restore_snapshot()
        self.lr_scale *= 0.5
        self._event(
            self.step,
            "rollback",
            f"{cfg.nan_skip_patience} non-finite steps in a row: rolled back to the state of step {snapshot_step}, "
            f"learning rate halved (x{self.lr_scale:g})",
            to_step=snapshot_step,
        )
        message = f"learning rate halved: x{self.lr_scale:g} of the schedule"
        self._event(self.step, "lr_halved", message, lr_scale=self.lr_scale)
        if self._rolled_back_without_progress and self.micro_batch_size > cfg.min_micro_batch_size:
            self.micro_batch_size = max(cfg.min_micro_batch_size, self.micro_batch_size // 2)
            self._event(
                self.step,
                "micro_batch_halved",
                f"still non-finite after a rollback: micro-batch halved to {self.micro_batch_size} "
                f"(effective batch {cfg.effective_batch_size} kept)",
                micro_batch_size=self.micro_batch_size,
            )
        self._rolled_back_without_progress = True

    def _take_snapshot(self) -> None:
        """Keep an in-memory copy of the LoRA weights and their optimizer state (the rollback target)."""
        self._snapshot = {
            "step": self.step,
            "params": [p.detach().clone() for p in self._params],
            "optimizer": [_clone_state(self.optimizer.state.get(p)) for p in self._params],
        }
        self._good_since_snapshot = 0

    def _restore_snapshot(self) -> None:
        if self._snapshot is None:
            return
        self._load_params(self._snapshot["params"])
        for param, state in zip(self._params, self._snapshot["optimizer"]):
            if state is None:
                self.optimizer.state.pop(param, None)
            else:
                self.optimizer.state[param] = _clone_state(state)
        self.optimizer.zero_grad(set_to_none=True)

    def _load_params(self, values: list[torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for param, value in zip(self._params, values):
                param.copy_(value)

    # --- evaluation and early stopping -------------------------------------------------------------------

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """Evaluate, merge ``eval_loss`` and ``eval_ppl`` into ``row``, track the best, maybe stop early."""
        while True:
            try:
                loss = self._eval_loss()
                break
            except Exception as exc:
                self._recover(exc, row["step"])
        row["eval_loss"] = loss
        row["eval_ppl"] = math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf
        self._emit("on_eval", row)
        if math.isfinite(loss) and (self.best_eval_loss is None or loss < self.best_eval_loss):
            self.best_eval_loss, self.best_step = loss, row["step"]
            self._best_params = [p.detach().clone() for p in self._params]
            self._evals_without_improvement = 0
            return
        self._evals_without_improvement += 1
        patience = self.config.early_stopping_patience
        if patience is not None and self._evals_without_improvement >= patience:
            self._event(
                row["step"],
                "early_stop",
                f"eval loss did not improve for {patience} evaluation(s) (best {self.best_eval_loss} at step "
                f"{self.best_step}): stopping",
                best_step=self.best_step,
            )
            raise _Stop("early_stopping")

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
                        loss = self._loss(chunk)
                        total += loss.float() * weight(chunk)
            except Exception as exc:
                if self._dist is None or not is_cuda_oom(exc):
                    raise
                failure = exc  # as in _forward_backward: the other ranks must hear of it, then all retry smaller
            if self._dist is None:
                return (total / weight(self._eval_blocks)).item()
            # each rank scored its share of the eval sequences: the mean over all of them, the same on every rank
            local = [0.0, 1.0] if failure is not None else [total.item(), 0.0]
            loss_sum, failures = self._dist.sum(local)
            if failures:
                raise failure or _remote_oom(round(failures), self.micro_batch_size)
            return loss_sum / self._eval_total
        finally:
            self.model.train()

    # --- checkpoints -------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "max_steps": self.max_steps,
            "history": self.history,
            "events": self.events,
            "lr_scale": self.lr_scale,
            "micro_batch_size": self.micro_batch_size,
            "nan_streak": self.nan_streak,
            "rollbacks": self.rollbacks,
            "rolled_back_without_progress": self._rolled_back_without_progress,
            "best_step": self.best_step,
            "best_eval_loss": self.best_eval_loss,
            "evals_without_improvement": self._evals_without_improvement,
            "elapsed_seconds": self._elapsed(),
            "fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "python_rng": _jsonable_python_rng(),
            "numpy_rng": _numpy_rng_state(),
        }
        if self.world_size > 1:
            state["world_size"] = self.world_size
        return state

    def _save_checkpoint(self) -> Path:
        """Write a checkpoint of the state after step ``self.step``; return its directory.

        In a data-parallel run only rank 0 writes (every rank holds the same weights and state); the others
        return the directory rank 0 writes, without waiting for it.
        """
        if not self.is_main_process:
            return self.checkpoint_dir / f"checkpoint-{self.step}"
        import torch
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        def adapter(path: Path) -> None:
            tensors = get_peft_model_state_dict(self.model)
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

        def best(path: Path) -> None:
            assert self._best_params is not None
            names = [n for n, _ in self._named_params]
            save_file({n: t.detach().cpu().contiguous() for n, t in zip(names, self._best_params)}, str(path))

        def adapter_config(path: Path) -> None:
            config = self.model.peft_config["default"].to_dict()
            path.write_text(json.dumps(config, indent=1, default=_json_default), encoding="utf-8")

        def rng(path: Path) -> None:
            states = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                states["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(states, path)

        writers: dict[str, Callable[[Path], None]] = {
            "adapter_model.safetensors": adapter,
            "adapter_config.json": adapter_config,
            "optimizer.pt": lambda path: torch.save(self.optimizer.state_dict(), path),
            "rng.pt": rng,
        }
        if self._best_params is not None:
            writers["best_adapter.safetensors"] = best
        keep = self.config.keep_checkpoints
        return ckpt.write_checkpoint(self.checkpoint_dir, self.step, writers, self._state(), keep=keep)

    def _load_checkpoint(self, path: Path) -> None:
        """Restore the run from checkpoint ``path`` (already checked by :meth:`_checkpoint_to_resume`)."""
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = ckpt.read_state(path)
        adapter = load_file(str(path / "adapter_model.safetensors"), device=str(self.device))
        result = set_peft_model_state_dict(self.model, adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {path} holds adapter weights this model does not have: {unexpected[:3]}")
        optimizer_state = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(optimizer_state)
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.set_rng_state_all(rng["cuda"])
        _set_python_rng(state.get("python_rng"))
        _set_numpy_rng(state.get("numpy_rng"))
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.events = list(state["events"])
        self.lr_scale = float(state["lr_scale"])
        # the micro-batch an out-of-memory halving left is kept (a bigger one would fail again on the same GPU)
        saved_micro = min(self.config.micro_batch_size, int(state["micro_batch_size"]))
        self.micro_batch_size = max(self.config.min_micro_batch_size, saved_micro)
        self.nan_streak = int(state["nan_streak"])
        self.rollbacks = int(state["rollbacks"])
        self._rolled_back_without_progress = bool(state["rolled_back_without_progress"])
        self.best_step = state["best_step"]
        self.best_eval_loss = state["best_eval_loss"]
        self._evals_without_improvement = int(state["evals_without_improvement"])
        self._elapsed_before = float(state["elapsed_seconds"])
        best_file = path / "best_adapter.safetensors"
        if best_file.is_file():
            tensors = load_file(str(best_file), device=str(self.device))
            self._best_params = [tensors[name].to(param.dtype) for name, param in self._named_params]
        self._resumed_from = path
        self.events.append({"step": self.step, "kind": "resumed", "message": f"resumed from {path.name}"})
        logger.info("resumed from %s at step %d of %d", path, self.step, self.max_steps)


def fine_tune(
    model: Any,
    tokenizer: Any,
    train_texts: TrainingData,
    eval_texts: TrainingData | None = None,
    config: FineTuneConfig | None = None,
    *,
    callbacks: Iterable[Any] = (),
    live_plot: bool = True,
    progress: bool = True,
) -> FineTuneResult:
    """Fine-tune ``model`` with LoRA on ``train_texts`` and return a :class:`FineTuneResult`.

    The model is wrapped in place (``result.model`` is the peft model, adapter attached). Texts are joined by
    EOS and cut into ``seq_len`` sequences. ``(prompt, completion)`` pairs (tuples, or dicts with ``"prompt"``
    and ``"completion"``) train on the completion only: one example per sequence (cut to ``seq_len``),
    right-padded, the prompt and padding masked out of the loss (see :mod:`.completions`); ``eval_texts`` may
    be pairs too. With ``eval_texts`` the eval loss and perplexity are measured every
    ``eval_every`` steps, early stopping is possible and the best adapter is restored at the end. Non-finite
    steps are skipped (then rolled back, learning rate and micro-batch halved), out-of-memory halves the
    micro-batch and retries the step, another CUDA error moves training to the CPU, and checkpoints are written
    atomically so that ``resume=True`` continues after a disconnect. ``callbacks`` receive ``on_step_end``,
    ``on_eval``, ``on_event`` (see :mod:`colab_helpers.finetune.callbacks`); ``live_plot`` draws a
    :class:`~colab_helpers.LivePlot` saved as ``<output_dir>/training.png``; ``progress`` shows a tqdm bar.
    """
    return FineTuner(
        model, tokenizer, train_texts, eval_texts, config, callbacks=callbacks, live_plot=live_plot, progress=progress
    ).train()


# --- small helpers ----------------------------------------------------------------------------------------


def _materialize(data: Any) -> Any:
    """Return ``data`` as a list, so that a generator can be looked at twice (a string or None as it is)."""
    return data if data is None or isinstance(data, str) else list(data)


def _cut(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Return the token stream ``ids`` cut into full ``[n, seq_len]`` blocks (the tail that does not fill one is
    dropped)."""
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def _remote_oom(failures: int, micro_batch_size: int) -> BaseException:
    """Return the out-of-memory error a rank raises when another rank ran out of memory (all ranks retry together)."""
    import torch

    return torch.OutOfMemoryError(f"CUDA out of memory on {failures} other rank(s) at micro-batch {micro_batch_size}")


def _clone_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if not state:
        return None
    return {k: v.detach().clone() if hasattr(v, "detach") else v for k, v in state.items()}


def _to_device(value: Any, device: torch.device) -> Any:
    if hasattr(value, "to") and hasattr(value, "detach"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def _move_optimizer_state(optimizer: Any, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if hasattr(value, "to") and hasattr(value, "detach") and not (key == "step" and value.device.type == "cpu"):
                state[key] = value.to(device)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _jsonable_python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng(state: list[Any] | None) -> None:
    if state:
        random.setstate((state[0], tuple(state[1]), state[2]))


def _numpy_rng_state() -> list[Any] | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    name, keys, pos, has_gauss, cached = numpy.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def _set_numpy_rng(state: list[Any] | None) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is None or not state:
        return
    name, keys, pos, has_gauss, cached = state
    numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached))
