"""The failure guard of the training loop: what a failed step leads to.

:class:`FailureGuard` keeps the in-memory rollback snapshots and climbs the ladder for non-finite steps (skip, roll
back and halve the learning rate, halve the micro-batch, stop), halves the micro-batch on out-of-memory, moves the
run to the CPU after another CUDA error, and gives the run's verdict at the end. It sees the run only through a
:class:`GuardedRun`, which the trainer builds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning, CudaFallbackWarning
from ..runtime.cuda_fallback import CudaFallbackError, is_cuda_error, is_cuda_oom, short_error
from .device import load_values, to_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import FineTuneConfig
    from .state import TrainingState

logger = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised inside the loop to end training early with a reason (``"non_finite"``, ``"early_stopping"``,
    ``"max_minutes"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GuardedRun:
    """What :class:`FailureGuard` reads of the run it guards, and what it may ask the run to do."""

    config: FineTuneConfig
    state: TrainingState  # the run's counters: the guard's own live there too, so a resume keeps them
    model: Any  # checked for NaN / infinity in its weights
    params: list[torch.nn.Parameter]  # the trained weights: snapshots and rollbacks, with their optimizer state
    optimizer: Any
    record_event: Callable[..., None]  # (step, kind, message, **extra)
    save_checkpoint: Callable[[], Any]
    move_to_cpu: Callable[[], None]  # the CUDA fallback
    checkpoint_dir: Path  # named in the errors that say how to resume
    output_dir: Path  # where free_memory reports the disk
    quantized: bool  # a 4-bit model cannot move to the CPU
    rank: int | None  # this process's rank in a data-parallel run; None in a single process


class FailureGuard:
    """Decide and carry out what a failed step of ``run`` leads to; see the module docstring."""

    def __init__(self, run: GuardedRun) -> None:
        self.run = run
        self.snapshot: dict[str, Any] | None = None  # the rollback target
        self.good_since_snapshot = 0
        self.fell_back = False  # already moved to the CPU: a second CUDA error is raised
        self.stop_message: str | None = None  # why the ladder stopped the run: warned by verdict()

    # --- non-finite steps --------------------------------------------------------------------------------

    def after_step(self, row: dict[str, Any]) -> None:
        """Count good and non-finite steps; snapshot, roll back, halve or stop (:class:`StopTraining`)."""
        state, cfg = self.run.state, self.run.config
        if row.get("overflow"):
            logger.debug("step %d: fp16 gradient overflow, loss scale lowered", row["step"])
            return
        if not row["skipped"]:
            state.nan_streak = 0
            state.rolled_back_without_progress = False
            self.good_since_snapshot += 1
            if self.good_since_snapshot >= cfg.snapshot_every:
                self.take_snapshot()
            return
        state.nan_streak += 1
        self.good_since_snapshot = 0
        self.run.record_event(
            state.step,
            "nan_skip",
            f"non-finite {'loss' if not math.isfinite(row['loss']) else 'gradients'}: step skipped "
            f"({state.nan_streak} in a row)",
            loss=row["loss"],
            grad_norm=row["grad_norm"],
        )
        if state.nan_streak >= cfg.nan_skip_patience:
            self._roll_back()

    def _roll_back(self) -> None:
        state, cfg = self.run.state, self.run.config
        state.nan_streak = 0
        state.rollbacks += 1
        snapshot_step = self.snapshot["step"] if self.snapshot else 0
        self.restore_snapshot()
        broken = non_finite_parameter(self.run.model)
        if broken is not None:  # the rollback target is broken too: halving anything cannot help (verdict() warns)
            message = f"training stopped: the model's weights hold NaN or infinity ({broken}); no rollback can help"
            self.run.record_event(state.step, "stopped", message)
            raise StopTraining("non_finite")
        if state.rollbacks > cfg.max_rollbacks:
            message = (
                f"training stopped: non-finite loss or gradients persisted after {cfg.max_rollbacks} rollback(s) "
                f"(learning rate now x{state.lr_scale:g}, micro-batch {state.micro_batch_size}); the adapter of step "
                f"{snapshot_step} is kept. Lower learning_rate, use dtype='fp32', or check the data"
            )
            self.run.record_event(state.step, "stopped", message)
            self.stop_message = message
            raise StopTraining("non_finite")
        state.lr_scale *= 0.5
        self.run.record_event(
            state.step,
            "rollback",
            f"{cfg.nan_skip_patience} non-finite steps in a row: rolled back to the state of step {snapshot_step}, "
            f"learning rate halved (x{state.lr_scale:g})",
            to_step=snapshot_step,
        )
        message = f"learning rate halved: x{state.lr_scale:g} of the schedule"
        self.run.record_event(state.step, "lr_halved", message, lr_scale=state.lr_scale)
        if state.rolled_back_without_progress and state.micro_batch_size > cfg.min_micro_batch_size:
            state.micro_batch_size = max(cfg.min_micro_batch_size, state.micro_batch_size // 2)
            self.run.record_event(
                state.step,
                "micro_batch_halved",
                f"still non-finite after a rollback: micro-batch halved to {state.micro_batch_size} "
                f"(effective batch {cfg.effective_batch_size} kept)",
                micro_batch_size=state.micro_batch_size,
            )
        state.rolled_back_without_progress = True

    # --- the end of a run --------------------------------------------------------------------------------

    def verdict(self, reason: str) -> tuple[str, str | None]:
        """Return the run's ``stopped_reason`` and why its adapter is no result (None when it is one); warn once.

        The run failed (``"non_finite"``) when the model's weights hold NaN or infinity, or when no step of the run
        had a finite loss and gradients (fp16 loss-scale overflows aside): its adapter is untrained or broken.
        """
        run, history = self.run, self.run.state.history
        never_trained = bool(history) and all(row["skipped"] and not row.get("overflow") for row in history)
        # the adapter is small: always checked; the whole model only when no step worked (to say why)
        broken = non_finite_parameter(run.model, trainable_only=not never_trained)
        if broken is not None:
            failure = (f"the model's weights hold NaN or infinity ({broken}); reload the model and check how it was "
                       "loaded, pruned or merged")  # fmt: skip
        elif never_trained:
            failure = (f"none of its {len(history)} steps had a finite loss and gradients, so the adapter was never "
                       "trained; lower learning_rate, use dtype='fp32', or check the data")  # fmt: skip
        else:
            if self.stop_message is not None:
                warnings.warn(self.stop_message, ColabHelpersWarning, stacklevel=5)
            return reason, None
        message = f"fine-tuning failed at step {run.state.step}: {failure}. No adapter was saved"
        run.record_event(run.state.step, "failed", message)
        warnings.warn(message, ColabHelpersWarning, stacklevel=5)  # verdict <- _finish <- train <- fine_tune <- caller
        return "non_finite", failure

    def take_snapshot(self) -> None:
        """Keep an in-memory copy of the LoRA weights and their optimizer state (the rollback target)."""
        params, optimizer = self.run.params, self.run.optimizer
        self.snapshot = {
            "step": self.run.state.step,
            "params": [p.detach().clone() for p in params],
            "optimizer": [_clone_state(optimizer.state.get(p)) for p in params],
        }
        self.good_since_snapshot = 0

    def restore_snapshot(self) -> None:
        """Put the snapshot's weights and optimizer state back (nothing before the first snapshot)."""
        if self.snapshot is None:
            return
        params, optimizer = self.run.params, self.run.optimizer
        load_values(params, self.snapshot["params"])
        for param, state in zip(params, self.snapshot["optimizer"]):
            if state is None:
                optimizer.state.pop(param, None)
            else:
                optimizer.state[param] = _clone_state(state)
        optimizer.zero_grad(set_to_none=True)

    # --- exceptions --------------------------------------------------------------------------------------

    def recover(self, exc: BaseException, step: int) -> None:
        """Handle an exception of a step or an evaluation so that it can be retried; re-raise what cannot."""
        run = self.run
        if is_cuda_oom(exc):
            self._halve_for_oom(exc, step)
        elif is_cuda_error(exc) and run.rank is not None:
            # the other ranks train on their GPUs through nccl: this one cannot go on alone on the CPU
            raise RuntimeError(
                f"rank {run.rank}: CUDA error in a data-parallel run ({exc}); the launcher stops every rank. Fix the "
                f"cause and launch again with resume=True (checkpoints in {run.checkpoint_dir})"
            ) from exc
        elif is_cuda_error(exc) and not self.fell_back:
            self._fall_back_to_cpu(exc, step)
        else:
            raise exc

    def _halve_for_oom(self, exc: BaseException, step: int) -> None:
        from ..runtime.memory import free_memory

        state, cfg = self.run.state, self.run.config
        if state.micro_batch_size <= cfg.min_micro_batch_size:
            with contextlib.suppress(Exception):
                self.run.save_checkpoint()
            raise RuntimeError(
                f"out of memory at micro_batch_size={state.micro_batch_size}, the floor (min_micro_batch_size="
                f"{cfg.min_micro_batch_size}): lower seq_len (now {cfg.seq_len}), use load_in_4bit=True or a smaller "
                f"model; the run is checkpointed, resume it with resume=True"
            ) from exc
        free_memory(self.run.output_dir)
        old = state.micro_batch_size
        state.micro_batch_size = max(cfg.min_micro_batch_size, old // 2)
        accumulation = math.ceil(cfg.effective_batch_size / state.micro_batch_size)
        self.run.record_event(
            step,
            "oom_retry",
            f"out of memory at micro-batch {old}: retrying with micro-batch {state.micro_batch_size} x "
            f"{accumulation} accumulation (effective batch {cfg.effective_batch_size} kept)",
            micro_batch_size=state.micro_batch_size,
        )

    def _fall_back_to_cpu(self, exc: BaseException, step: int) -> None:
        """Checkpoint, move the run to the CPU, warn, and let the failed step be retried there."""
        import torch

        run = self.run
        try:
            run.save_checkpoint()
        except Exception as save_error:  # a dead CUDA context cannot even be copied: the last checkpoint stays
            logger.warning("could not checkpoint after the CUDA error (%s)", short_error(save_error))
        restart = f"the runtime and run again with resume=True (checkpoints in {run.checkpoint_dir})"
        if run.quantized:
            message = f"{short_error(exc)}: a 4-bit model cannot move to the CPU. Restart {restart}"
            raise CudaFallbackError(message) from exc
        try:
            if self.snapshot is not None:
                self.snapshot = to_device(self.snapshot, torch.device("cpu"))
            run.move_to_cpu()
        except Exception as move_error:
            raise CudaFallbackError(
                f"{short_error(exc)}, and moving the model to the CPU failed too ({short_error(move_error)}): "
                f"restart {restart}"
            ) from exc
        self.fell_back = True
        warnings.warn(
            f"training failed on CUDA ({short_error(exc)}); checkpointed at step {run.state.step} and continuing on "
            "the CPU (slower). Restart the runtime and resume=True to use the GPU again.",
            CudaFallbackWarning,
            stacklevel=4,
        )
        message = f"CUDA error ({short_error(exc)}): continuing on the CPU"
        run.record_event(step, "cpu_fallback", message, error=short_error(exc))


def non_finite_parameter(model: Any, *, trainable_only: bool = False) -> str | None:
    """Return the name of the first floating-point parameter of ``model`` holding NaN or infinity, or None.

    Checked in chunks of 16M values, so that a large embedding needs no full-size temporary on a full GPU.
    """
    import torch

    for name, param in model.named_parameters():
        if not param.is_floating_point() or (trainable_only and not param.requires_grad):
            continue
        if not all(bool(torch.isfinite(chunk).all()) for chunk in param.detach().reshape(-1).split(1 << 24)):
            return name
    return None


def check_finite_weights(model: Any, what: str = "the model") -> None:
    """Raise ValueError naming the first parameter of ``model`` that holds NaN or infinity: every loss of such a model
    is NaN, so a run would only skip steps (and write checkpoints of nothing). Call it before any file work."""
    broken = non_finite_parameter(model)
    if broken is not None:
        raise ValueError(
            f"{what} holds NaN or infinity in {broken!r} (the first such weight) before training, so every loss would "
            "be NaN; load it again (e.g. load_model(name)), or find what broke it (a diverged earlier run, an overflow "
            "after a cast to float16) and train a copy made before"
        )


def _clone_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if not state:
        return None
    return {k: v.detach().clone() if hasattr(v, "detach") else v for k, v in state.items()}
